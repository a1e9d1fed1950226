"""`CpService`: the control plane's behaviour over its SQLite store, clock-free.

The aiohttp handlers and the fleet simulator call the same methods with their own
`now`. Each method loads rows, asks the pure cores what to do (dispatch ladder,
confirm guard, reconciler, verification) and writes the outcome. Log lines are the
stable prefixes the seed runbooks grep for.
"""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from nixfleet import __version__
from nixfleet.core import actions as act
from nixfleet.core import clockskew, health, wire
from nixfleet.core import dispatch as dec
from nixfleet.core.canonical import canonicalize, sha256_hex
from nixfleet.core.errors import NixfleetError, VerifyError
from nixfleet.core.gates import GateMode, GateView, first_block, needs_host_states
from nixfleet.core.hostkey import fingerprint, parse_public_line
from nixfleet.core.idents import escape_controls
from nixfleet.core.manifest import manifest_bytes
from nixfleet.core.observed import Deferral, Observed
from nixfleet.core.projection import HostCheckin, RolloutRow, project_observed
from nixfleet.core.reconcile import next_last_deferrals, reconcile
from nixfleet.core.rollout_state import CONVERGED, FAILED, HEALTHY, REVERTED, SOAKED
from nixfleet.core.sidecars import (
    BootstrapNonce,
    nonce_allowlist,
    nonce_entry_live,
    parse_bootstrap_nonces,
    parse_revocations,
)
from nixfleet.core.signing import parse_public_key, verify_signature
from nixfleet.core.snapshot import FleetSnapshot, replaces, snapshot_from_verified
from nixfleet.core.timeutil import format_instant
from nixfleet.core.token import parse_token, verify_token
from nixfleet.core.trust import Trust
from nixfleet.core.verify import rollout_id_matches, verify_artifact

from . import issuance
from .api import AWAITING_FLEET, NOT_READY, ApiError, not_ready, unauthorized
from .journal import OperatorJournal
from .metrics import CpMetrics
from .store import Store

log = logging.getLogger("nixfleet.cp")

AGENT_POLL = timedelta(seconds=60)
FAILURE_REPORTS = frozenset({"activation-failed", "verify-mismatch"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSettings:
    agent_cn_suffix: str
    confirm_window: timedelta = dec.DEFAULT_CONFIRM_WINDOW
    freshness_window_secs: int = 2_592_000
    agent_cert_validity_secs: int = 2_592_000
    agent_poll: timedelta = AGENT_POLL
    health_failure: timedelta = health.FAILURE_THRESHOLD
    """H11: how long a host's probes may not pass before it is Failed."""
    needs_revocations: bool = False
    needs_nonces: bool = False


@dataclass(slots=True)
class _Memory:
    """Soft, in-memory state: rebuilt by the next checkin, poll or tick."""

    checkins: dict[str, tuple[datetime, wire.CheckinRequest]] = field(default_factory=dict)
    last_deferrals: dict[str, Deferral] = field(default_factory=dict)
    allowlist: dict[str, BootstrapNonce] | None = None
    revocations_primed: bool = False
    refused: set[str] = field(default_factory=set)
    """fleet hashes of artifacts already refused as older than the snapshot."""
    failing_since: dict[str, datetime] = field(default_factory=dict)
    """H11: when each host's current streak of not-passing probes began."""
    skew_warned: dict[str, clockskew.SkewWarned] = field(default_factory=dict)
    """The last clock-skew warning per host whose clock is still off."""
    unrecorded: tuple[str, str] | None = None
    """(signedAt, reason) of a newer artifact refused because it could not be recorded."""


def _replayed(hostname: str, nonce: str, at: str) -> ApiError:
    """A spent token offered again (409), said in the log: `at` is the early check or
    the atomic record (the token_replay insert) that caught it."""
    log.warning(
        "token replay detected at %s host=%s nonce=%s",
        at,
        escape_controls(hostname),
        escape_controls(nonce),
    )
    return ApiError(409, "conflict", f"token nonce {nonce} already used")


class CpService:
    def __init__(
        self,
        store: Store | None,
        trust: Callable[[], Trust],
        settings: ServiceSettings,
        *,
        fleet_ca: issuance.FleetCa | None = None,
        audit: Callable[[str], None] | None = None,
        metrics: CpMetrics | None = None,
        manifest_source: Callable[[str], tuple[bytes, bytes] | None] | None = None,
        journal: OperatorJournal | None = None,
    ) -> None:
        self.store = store
        self.trust = trust
        self.settings = settings
        self.fleet_ca = fleet_ca
        self.audit = audit
        self.metrics = metrics or CpMetrics()
        self.manifest_source = manifest_source
        """rolloutId → (manifest bytes, raw CI signature), e.g. `--rollouts-dir`."""
        self.journal = journal
        """Keeps operator revocations and spent nonces through the DR wipe."""
        self.snapshot: FleetSnapshot | None = None
        self.last_tick_at: datetime | None = None
        self.mem = _Memory()
        self._gate_cache: tuple[tuple[int, str], GateView] | None = None
        self._rollout_cache: tuple[int, dict[str, RolloutRow | None]] = (-1, {})

    # --- readiness and snapshots ---------------------------------------------------

    @property
    def awaiting(self) -> str | None:
        """What readiness still waits for, in words; None once ready."""
        s = self.settings
        if self.snapshot is None:
            return AWAITING_FLEET
        if s.needs_revocations and not self.mem.revocations_primed:
            return "awaiting the first verified revocations list (--revocations-artifact-url)"
        if s.needs_nonces and self.mem.allowlist is None:
            return (
                "awaiting the first verified bootstrap-nonces allowlist "
                "(--bootstrap-nonces-artifact-url)"
            )
        return None

    @property
    def ready(self) -> bool:
        return self.awaiting is None

    def require_ready(self) -> None:
        """The readiness gate of every `/v1/*` call (503, Retry-After 30)."""
        awaiting = self.awaiting
        if awaiting is not None:
            raise not_ready(awaiting)

    def health(self) -> dict[str, Any]:
        """`/healthz`: liveness as seed 001 reads it, plus readiness and its reason and
        the snapshot served (with a newer one refused, if it could not be recorded)."""
        snap = self.snapshot
        tick = self.last_tick_at
        out: dict[str, Any] = {
            "ok": True,
            "version": __version__,
            "last_tick_at": tick and format_instant(tick),
            "ready": self.ready,
            "awaiting": self.awaiting,
            "snapshot": None
            if snap is None
            else {"signed_at": snap.signed_at_text, "source": snap.source},
        }
        if self.mem.unrecorded is not None:
            signed_at, reason = self.mem.unrecorded
            out["refused_snapshot"] = {"signed_at": signed_at, "reason": reason}
        return out

    def offer_fleet(
        self,
        raw: bytes,
        signature: bytes,
        *,
        now: datetime,
        source: str,
        record: Callable[[bytes, bytes], None] | None = None,
    ) -> bool:
        """Verify a fleet artifact and install it unless it is older than the current one.

        `record` makes a newer artifact durable before it is served (the snapshot cache
        for upstream artifacts). A snapshot that could not be recorded is never served:
        a restart with the forge down would fall back to the recorded, older one, and
        the fleet would step backwards (seed 000 stair-step, by way of a full disk).

        Raises VerifyError (the snapshot is then untouched)."""
        verified = verify_artifact(
            raw,
            signature,
            self.trust().ci_release_key,
            now=now,
            window_secs=self.settings.freshness_window_secs,
            source="fleet.resolved.json",
        )
        current = self.snapshot
        digest = sha256_hex(verified.canonical)
        if not replaces(current, verified.signed_at, source=source):
            # Said once per refused artifact: the build-time one is re-offered every tick.
            if digest not in self.mem.refused:
                self.mem.refused.add(digest)
                log.info(
                    "channel-refs: keeping newer snapshot signed_at=%s; %s artifact "
                    "signed_at=%s is older",
                    current.signed_at_text if current else None,
                    source,
                    verified.signed_at_text,
                )
            return False
        if current is not None and current.fleet_hash == digest:
            return True  # the same artifact again: nothing to project
        if record is not None and not self._record(record, raw, signature, verified.signed_at_text):
            return False
        candidate = snapshot_from_verified(verified, source=source)
        was_ready = self.ready
        self.snapshot = candidate
        if current is None or current.fleet_hash != candidate.fleet_hash:
            log.info(
                "channel-refs poll: verified-fleet snapshot refreshed source=%s signed_at=%s "
                "ci_commit=%s",
                source,
                candidate.signed_at_text,
                candidate.ci_commit,
            )
        self._say_if_ready(was_ready)
        return True

    def _say_if_ready(self, was_ready: bool) -> None:
        if not was_ready and self.ready:
            log.info("control plane ready: every awaited signed artifact verified")
        elif not self.ready:
            log.info("control plane not ready: %s", self.awaiting)

    def _record(
        self, record: Callable[[bytes, bytes], None], raw: bytes, sig: bytes, signed_at: str
    ) -> bool:
        try:
            record(raw, sig)
        except OSError as exc:
            reason = f"cannot record it durably: {exc.strerror or exc}"
            if self.mem.unrecorded != (signed_at, reason):  # said once per artifact and cause
                log.error(
                    "channel-refs: refusing newer snapshot signed_at=%s (%s); still serving "
                    "signed_at=%s",
                    signed_at,
                    reason,
                    self.snapshot.signed_at_text if self.snapshot else None,
                )
            self.mem.unrecorded = (signed_at, reason)
            return False
        self.mem.unrecorded = None
        return True

    def offer_revocations(self, raw: bytes, signature: bytes, *, now: datetime) -> None:
        verified = verify_artifact(
            raw,
            signature,
            self.trust().ci_release_key,
            now=now,
            window_secs=self.settings.freshness_window_secs,
            source="revocations.json",
        )
        doc = parse_revocations(verified.value)
        was_ready = self.ready
        store = self._store()
        applied, pruned = store.replace_sidecar_revocations(doc.revocations, now=now)
        if not self.mem.revocations_primed:
            log.info("revocations primed: first verified list applied")
        self.mem.revocations_primed = True
        log.info(
            "revocations poll: list verified entries=%d applied=%d pruned=%d (cert_revocations)",
            len(doc.revocations),
            applied,
            pruned,
        )
        self._say_if_ready(was_ready)

    def offer_nonces(self, raw: bytes, signature: bytes, *, now: datetime) -> None:
        verified = verify_artifact(
            raw,
            signature,
            self.trust().ci_release_key,
            now=now,
            window_secs=self.settings.freshness_window_secs,
            source="bootstrap-nonces.json",
        )
        was_ready = self.ready
        self.mem.allowlist = nonce_allowlist(parse_bootstrap_nonces(verified.value))
        log.info(
            "bootstrap-nonces poll: allowlist verified + applied entries=%d",
            len(self.mem.allowlist),
        )
        self._say_if_ready(was_ready)

    def _snapshot(self) -> FleetSnapshot:
        if self.snapshot is None:
            raise NOT_READY
        return self.snapshot

    def _store(self) -> Store:
        if self.store is None:
            raise ApiError(503, "no database", "the control plane runs without --db-path")
        return self.store

    # --- identity ----------------------------------------------------------------

    def machine_id(self, cn: str) -> str:
        return issuance.extract_machine_id(cn, self.settings.agent_cn_suffix)

    def is_revoked(self, machine_id: str, cert_not_before: datetime) -> bool:
        return self.store is not None and self.store.is_revoked(machine_id, cert_not_before)

    # --- checkin -----------------------------------------------------------------

    def _plan(self, snap: FleetSnapshot, hostname: str) -> dec.HostPlan:
        host = snap.fleet.hosts.get(hostname)
        if host is None:
            return dec.HostPlan(declared=False, closure_hash=None, rollout_id=None, wave_index=None)
        rid = snap.rollout_ids.get(host.channel)
        store = self._store()
        ro = self._rollout(rid) if rid is not None else None
        part = store.participation(rid, hostname) if rid is not None else None
        return dec.HostPlan(
            declared=True,
            closure_hash=host.closure_hash,
            rollout_id=rid,
            wave_index=snap.fleet.wave_index(hostname),
            current_wave=ro.current_wave if ro is not None else 0,
            rollout_halted=ro is not None and ro.state == "Halted",
            participation=part.host_state if part is not None else None,
        )

    def _rollout(self, rid: str) -> RolloutRow | None:
        """Rollout rows change only on writes; every checkin reads its channel's."""
        store = self._store()
        if self._rollout_cache[0] != store.writes:
            self._rollout_cache = (store.writes, {})
        rows = self._rollout_cache[1]
        if rid not in rows:
            rows[rid] = store.rollout(rid)
        return rows[rid]

    def observed(self, now: datetime, *, for_gates: bool = False) -> Observed:
        """The reconciler's view of the fleet; `for_gates` builds only what the gates
        read (no host observations; per-host rollout states only if a gate needs them)."""
        snap = self._snapshot()
        store = self._store()
        states = not for_gates or needs_host_states(snap.fleet)
        hosts = snap.fleet.hosts
        checkins = {
            h: HostCheckin(
                at=at,
                current_closure=req.current_generation.closure_hash,
                probes_passing=health.probes_passing(req.health_check_mode, req.health_probes),
                probes_observed=health.probes_observed(
                    req.health_check_mode,
                    req.health_probes,
                    # Sent before the switch to the declared closure: not its probes.
                    on_target=h not in hosts
                    or hosts[h].closure_hash in (None, req.current_generation.closure_hash),
                ),
            )
            for h, (at, req) in (self.mem.checkins.items() if not for_gates else ())
        }
        return project_observed(
            snap,
            store.rollout_rows(),
            store.participation_rows() if states else (),
            store.latest_dispatch_rows() if states else (),
            checkins,
            now=now,
            poll=self.settings.agent_poll,
            quarantined=store.quarantined(),
            last_deferrals=self.mem.last_deferrals,
            with_host_states=states,
            with_hosts=not for_gates,
        )

    def _gate_view(self, snap: FleetSnapshot, now: datetime) -> GateView:
        """The gates' view, rebuilt only after a write (gates never read `now`-based
        online status, so the store's write count and the snapshot key it)."""
        key = (self._store().writes, snap.fleet_hash)
        if self._gate_cache is None or self._gate_cache[0] != key:
            observed = self.observed(now, for_gates=True)
            self._gate_cache = (key, GateView.of(observed))
        return self._gate_cache[1]

    def checkin(self, req: wire.CheckinRequest, *, now: datetime) -> wire.CheckinResponse:
        host = req.hostname
        self.mem.checkins[host] = (now, req)
        self.metrics.checkins.inc()
        fetch = req.last_fetch_outcome
        log.info(
            "checkin received closure_hash=%s pending=%s last_fetch=%s from %s",
            req.current_generation.closure_hash,
            req.pending_generation.closure_hash if req.pending_generation else None,
            fetch.result if fetch else None,
            host,
        )
        if req.sent_at is not None:
            self._note_clock(host, clockskew.skew_secs(req.sent_at, now), now)
        snap = self.snapshot
        if snap is None or self.store is None:
            return wire.CheckinResponse()
        store = self.store
        plan = self._plan(snap, host)
        facts = dec.CheckinFacts(
            hostname=host,
            current_closure=req.current_generation.closure_hash,
            last_fetch_outcome=fetch,
        )
        op = store.latest_dispatch(host)
        op_row = op.as_op_row() if op is not None else None
        writes = store.writes
        self._recover(req, facts, plan, op, now)
        if store.writes != writes:  # a recovery rule wrote: decide on the new rows
            plan = self._plan(snap, host)
            op = store.latest_dispatch(host)
            op_row = op.as_op_row() if op is not None else None
        decision = dec.decide_checkin(
            facts,
            plan,
            op_row,
            lambda: self._gate(snap, host, now),
            now,
            self.settings.confirm_window,
        )
        target = None
        if isinstance(decision, dec.Dispatch):
            target = self._dispatch(snap, host, decision, now)
        elif decision.record_converged and plan.rollout_id is not None:
            store.record_converged_at_dispatch(
                host, plan.rollout_id, plan.wave_index or 0, facts.current_closure, now=now
            )
            log.info(
                "dispatch: host converged-at-dispatch rollout=%s host=%s", plan.rollout_id, host
            )
        elif decision.reason.startswith("held by fleet-level gate"):
            log.info("dispatch: %s host=%s", decision.reason, host)
        return wire.CheckinResponse(target=target, rollback=self._rollback_signal(snap, plan, host))

    def _note_clock(self, host: str, skew: int, now: datetime) -> None:
        """Publish the host's clock skew; warn (rate-limited) while it is off, and say
        once when it is right again."""
        self.metrics.clock_skew.labels(host=host).set(skew)
        last = self.mem.skew_warned.get(host)
        if clockskew.should_warn(skew, last, now):
            self.mem.skew_warned[host] = clockskew.SkewWarned(at=now, skew_secs=skew)
            log.warning(
                "clock skew: agent clock is %d s %s the control plane's; fix the host "
                "clock skew_secs=%d host=%s",
                abs(skew),
                "behind" if skew < 0 else "ahead of",
                skew,
                host,
            )
        elif last is not None and not clockskew.is_skewed(skew):
            del self.mem.skew_warned[host]
            log.info("clock skew: agent clock is right again skew_secs=%d host=%s", skew, host)

    def _recover(
        self,
        req: wire.CheckinRequest,
        facts: dec.CheckinFacts,
        plan: dec.HostPlan,
        op: Any,
        now: datetime,
    ) -> None:
        """H14, H15 and H6, in that order (lifecycle §4.1)."""
        store = self._store()
        host = req.hostname
        op_row = op.as_op_row() if op is not None else None
        healthy = plan.participation == HEALTHY
        if dec.resets_soak(facts, op_row, healthy) and op is not None:
            store.set_participation(op.rollout_id, host, HEALTHY, now=now, healthy_since=None)
        rid = plan.rollout_id
        if rid is not None and dec.accepts_attestation(
            facts, plan, req.last_confirmed_at, lambda: self._attestation_ok(req, rid)
        ):
            assert req.last_confirmed_at is not None
            since = dec.healthy_since(req.last_confirmed_at, now)
            wave = req.last_evaluated_target.wave_index if req.last_evaluated_target else None
            store.confirm_attested(
                host,
                rid,
                wave or 0,
                facts.current_closure,
                healthy_since=since,
                now=now,
            )
            log.info(
                "confirm received (attested) rollout=%s host=%s since=%s",
                rid,
                host,
                format_instant(since),
            )
        elif op is not None and dec.revives_lost_confirm(facts, plan, op_row):
            store.set_dispatch_state(op.id, dec.CONFIRMED, now=now)
            store.set_participation(op.rollout_id, host, HEALTHY, now=now, healthy_since=now)
            log.info(
                "confirm received (revived at checkin) rollout=%s host=%s", op.rollout_id, host
            )

    def _attestation_ok(self, req: wire.CheckinRequest, rollout_id: str) -> bool:
        snap = self.snapshot
        text = req.last_confirmed_at_wire
        if snap is None or text is None or req.attestation_signature is None:
            return False
        host = snap.fleet.hosts.get(req.hostname)
        if host is None or host.pubkey is None:
            return False
        try:
            pub = parse_public_line(host.pubkey)
            key = parse_public_key("ed25519", base64.b64encode(pub.raw).decode())
            sig = base64.b64decode(req.attestation_signature, validate=True)
        except (NixfleetError, ValueError):
            return False
        payload = wire.attestation_payload(
            hostname=req.hostname, rollout_id=rollout_id, last_confirmed_at=text
        )
        return verify_signature(key, payload, sig)

    def _gate(self, snap: FleetSnapshot, host: str, now: datetime) -> str | None:
        channel = snap.fleet.hosts[host].channel
        view = self._gate_view(snap, now)
        rollout = view.first_rollout_on(channel)
        reason = first_block(snap.fleet, view, host, rollout, GateMode.DISPATCH)
        if reason is not None:
            self.metrics.gate_blocks.labels(gate=reason.split(":")[0].split(" ")[0]).inc()
        return reason

    def _dispatch(
        self, snap: FleetSnapshot, host: str, d: dec.Dispatch, now: datetime
    ) -> wire.EvaluatedTarget:
        store = self._store()
        channel = snap.fleet.hosts[host].channel
        if d.reoffer:
            log.info(
                "dispatch: target re-offered (pending, host reports no activation) rollout=%s "
                "target_closure=%s confirm_deadline=%s host=%s",
                d.rollout_id,
                d.closure_hash,
                format_instant(d.confirm_deadline),
                host,
            )
        else:
            store.ensure_rollout(d.rollout_id, channel, now=now)
            store.insert_dispatch(
                host,
                d.rollout_id,
                d.wave_index or 0,
                d.closure_hash,
                d.rollout_id,
                dispatched_at=now,
                deadline=d.confirm_deadline,
            )
            self.metrics.dispatches.inc()
            log.info(
                "dispatch: target issued rollout=%s target_closure=%s confirm_deadline=%s "
                "host=%s",
                d.rollout_id,
                d.closure_hash,
                format_instant(d.confirm_deadline),
                host,
            )
        ch = snap.fleet.channels.get(channel)
        return wire.EvaluatedTarget(
            closure_hash=wire.ClosureHash(d.closure_hash),
            channel_ref=d.rollout_id,
            evaluated_at=now,
            rollout_id=d.rollout_id,
            wave_index=d.wave_index,
            # The row's deadline as seen from now: the whole window for a new dispatch,
            # what is left of it for a re-offer, so the agent's watchdog agrees.
            activate=wire.Activate(
                confirm_window_secs=int((d.confirm_deadline - now).total_seconds())
            ),
            signed_at=snap.signed_at,
            signed_at_text=snap.signed_at_text,
            freshness_window_secs=(ch.freshness_window * 60) if ch else 0,
            compliance_mode=ch.compliance.mode if ch else None,
        )

    def _rollback_signal(
        self, snap: FleetSnapshot, plan: dec.HostPlan, host: str
    ) -> wire.RollbackSignal | None:
        decl = snap.fleet.hosts.get(host)
        if decl is None or plan.rollout_id is None:
            return None
        policy = snap.fleet.policy_for(decl.channel)
        return dec.rollback_signal(
            host,
            plan.rollout_id,
            plan.rollout_id,
            plan.participation,
            policy.on_health_failure if policy else None,
        )

    # --- confirm and report ----------------------------------------------------------

    def confirm(self, req: wire.ConfirmRequest, *, now: datetime) -> dec.ConfirmVerdict:
        """Decide a confirm and write its outcome in one transaction. A MISMATCH raises
        409 with its reason and writes nothing."""
        store = self._store()
        snap = self.snapshot
        host = req.hostname
        plan = (
            self._plan(snap, host)
            if snap is not None
            else dec.HostPlan(declared=False, closure_hash=None, rollout_id=None, wave_index=None)
        )
        row = store.dispatch_for(host, req.rollout)
        op_row = row.as_op_row() if row is not None else None
        facts = dec.ConfirmFacts(
            hostname=host,
            rollout_id=req.rollout,
            closure_hash=req.generation.closure_hash,
            wave=req.wave,
        )
        verdict = dec.decide_confirm(facts, op_row, plan, now)
        V = dec.ConfirmVerdict
        if verdict is V.ACCEPT and row is not None:
            store.confirm_dispatch(row.id, now=now)
            self.metrics.confirms.inc()
            log.info(
                "confirm received rollout=%s wave=%d closure_hash=%s host=%s",
                req.rollout,
                req.wave,
                req.generation.closure_hash,
                host,
            )
        elif verdict is V.ALREADY_CONFIRMED:
            log.info(
                "confirm received (repeated; already confirmed) rollout=%s closure_hash=%s "
                "host=%s",
                req.rollout,
                req.generation.closure_hash,
                host,
            )
        elif verdict is V.ORPHAN:
            store.confirm_attested(
                host, req.rollout, req.wave, req.generation.closure_hash, healthy_since=now, now=now
            )
            self.metrics.confirms.inc()
            log.info(
                "confirm received (orphan recovered) rollout=%s closure_hash=%s host=%s",
                req.rollout,
                req.generation.closure_hash,
                host,
            )
        elif verdict is V.MISMATCH and op_row is not None:
            reason = dec.confirm_mismatch(facts, op_row)
            log.warning(
                "confirm rejected: mismatch rollout=%s dispatched=%s wave=%d "
                "confirmed=%s confirmed_wave=%d host=%s",
                req.rollout,
                op_row.target_closure_hash,
                op_row.wave,
                req.generation.closure_hash,
                req.wave,
                host,
            )
            raise ApiError(409, "conflict", reason)
        else:
            if row is not None and row.state == dec.PENDING:
                store.set_dispatch_state(row.id, dec.ROLLED_BACK, now=now)
            log.info(
                "confirm: no matching pending row + no recoverable orphan - returning 410 "
                "rollout=%s verdict=%s host=%s",
                req.rollout,
                verdict.value,
                host,
            )
        return verdict

    def report(self, req: wire.ReportRequest, *, now: datetime) -> wire.ReportAccepted:
        store = self._store()
        event_id = f"evt-{int(now.timestamp() * 1000)}-{secrets.token_hex(4)}"
        status = self._report_signature_status(req)
        store.insert_report(req, event_id=event_id, signature_status=status, now=now)
        log.info(
            "report received event=%s rollout=%s signature=%s host=%s",
            req.event,
            req.rollout,
            status,
            req.hostname,
        )
        rid = req.rollout
        if rid is not None:
            part = store.participation(rid, req.hostname)
            state = part.host_state if part else None
            if req.event in FAILURE_REPORTS and state not in (REVERTED, CONVERGED):
                store.set_participation(rid, req.hostname, FAILED, now=now)
            elif req.event == "rollback-triggered":
                # H13: Failed → Reverted; the rollout's dispatch row ends rolled back.
                row = store.dispatch_for(req.hostname, rid)
                if row is not None and row.state in (dec.PENDING, dec.CONFIRMED):
                    store.set_dispatch_state(row.id, dec.ROLLED_BACK, now=now)
                if state in (FAILED, None, HEALTHY):
                    store.set_participation(rid, req.hostname, REVERTED, now=now)
            elif req.event == "activation-deferred":
                row = store.dispatch_for(req.hostname, rid)
                if row is not None and row.state == dec.PENDING:
                    store.set_dispatch_state(row.id, dec.DEFERRED, now=now)
        return wire.ReportAccepted(event_id=event_id)

    def _report_signature_status(self, req: wire.ReportRequest) -> str:
        if req.signature is None:
            return "unsigned"
        snap = self.snapshot
        host = snap.fleet.hosts.get(req.hostname) if snap else None
        if host is None or host.pubkey is None:
            return "no-pubkey"
        try:
            pub = parse_public_line(host.pubkey)
            key = parse_public_key("ed25519", base64.b64encode(pub.raw).decode())
            sig = base64.b64decode(req.signature, validate=True)
            payload = wire.report_evidence_payload(req)
        except (NixfleetError, ValueError):
            return "malformed"
        return "verified" if verify_signature(key, payload, sig) else "mismatch"

    # --- enrollment ---------------------------------------------------------------

    def enroll(self, req: wire.EnrollRequest, *, now: datetime) -> wire.CertIssued:
        """Checks in the order of protocol §1.3; the first failure answers."""
        store = self._store()
        token = parse_token(dict(req.token), source="enroll token")
        claims = token.claims
        if store.nonce_used(claims.nonce):
            raise _replayed(claims.hostname, claims.nonce, "check")
        allow = self.mem.allowlist
        if allow is not None:
            entry = allow.get(claims.nonce)
            if entry is None:
                raise unauthorized("nonce_not_allowlisted")
            if entry.hostname != claims.hostname:
                raise unauthorized("allowlist hostname differs from the token's")
            if not nonce_entry_live(entry, now):
                raise unauthorized("allowlist entry expired")
        try:
            verify_token(token, self.trust(), now)
        except VerifyError as exc:
            raise unauthorized(f"bootstrap token rejected: {exc}") from exc
        csr = issuance.parse_csr(req.csr_pem)
        if csr.cn != claims.hostname:
            raise unauthorized(f"CSR CN {csr.cn!r} is not {claims.hostname!r}")
        if csr.fingerprint != claims.expected_pubkey_fingerprint:
            raise unauthorized("CSR key does not match expectedPubkeyFingerprint")
        self._check_declared_key(claims.hostname, csr)
        # The CA check comes before the nonce is consumed (the reference checks it
        # last): a CP started without a fleet CA must not burn a valid token.
        self._fleet_ca()
        if self.journal is not None:  # durable before the claim: a 503 leaves it unspent
            self.journal.nonce_spent(claims.nonce, claims.hostname, now=now)
        if not store.record_nonce(claims.nonce, claims.hostname, now=now):
            # A concurrent enroll with the same token claimed it since the check above.
            raise _replayed(claims.hostname, claims.nonce, "record")
        issued = self._issue(
            csr, claims.hostname, now, context=issuance.enroll_context(claims.nonce), requester=None
        )
        log.info("enrolled host=%s not_after=%s", claims.hostname, format_instant(issued.not_after))
        return issued

    def renew(self, machine_id: str, req: wire.RenewRequest, *, now: datetime) -> wire.CertIssued:
        self._store()
        csr = issuance.parse_csr(req.csr_pem)
        self._check_declared_key(machine_id, csr)
        # Renew keeps the caller's identity (decisions.md).
        issued = self._issue(
            csr, machine_id, now, context=issuance.renew_context(), requester=machine_id
        )
        log.info("renewed host=%s not_after=%s", machine_id, format_instant(issued.not_after))
        return issued

    def _check_declared_key(self, hostname: str, csr: issuance.Csr) -> None:
        snap = self._snapshot()
        host = snap.fleet.hosts.get(hostname)
        if host is None:
            raise unauthorized(f"host {hostname} is not declared in the fleet")
        if not csr.is_ed25519:
            raise ApiError(400, "bad request", "CSR key must be ed25519 (the SSH host key)")
        if host.pubkey is None:
            raise unauthorized(f"host {hostname} declares no pubkey")
        declared = parse_public_line(host.pubkey, source=f"hosts.{hostname}.pubkey")
        if fingerprint(declared.raw) != csr.fingerprint:
            raise unauthorized(f"CSR key is not the declared SSH host key of {hostname}")

    def _fleet_ca(self) -> issuance.FleetCa:
        if self.fleet_ca is None:
            raise ApiError(
                500,
                "no fleet CA",
                "this control plane has no fleet CA: enroll and renew need --fleet-ca-cert "
                "and --fleet-ca-key (checkins with existing certificates keep working)",
            )
        return self.fleet_ca

    def _issue(
        self,
        csr: issuance.Csr,
        machine_id: str,
        now: datetime,
        *,
        context: str,
        requester: str | None,
    ) -> wire.CertIssued:
        pem, not_after = issuance.issue_agent_cert(
            self._fleet_ca(),
            csr,
            machine_id,
            self.settings.agent_cn_suffix,
            now,
            validity_secs=self.settings.agent_cert_validity_secs,
        )
        if self.audit is not None:
            self.audit(
                issuance.audit_line(
                    at=now,
                    requester_cn=requester,
                    issued_cn=issuance.agent_cn(machine_id, self.settings.agent_cn_suffix),
                    not_after=not_after,
                    validity_secs=self.settings.agent_cert_validity_secs,
                    context=context,
                )
            )
        return wire.CertIssued(cert_pem=pem, not_after=not_after)

    # --- timers -------------------------------------------------------------------

    def tick(self, *, now: datetime) -> list[act.Action]:
        """One reconcile pass: decide, then perform the mutating actions."""
        self.last_tick_at = now
        snap = self.snapshot
        if snap is None or self.store is None:
            log.info("tick verify_ok=false reason=no-snapshot")
            return []
        self._health_sweep(snap, now)
        observed = self.observed(now)
        actions = reconcile(snap.fleet, observed, now)
        self._apply(snap, observed, actions, now)
        log.info(
            "tick verify_ok=true signed_at=%s ci_commit=%s channels_observed=%d "
            "active_rollouts=%d actions=%d",
            snap.signed_at_text,
            snap.ci_commit,
            len(observed.channel_refs),
            len(observed.active_rollouts),
            len(actions),
        )
        return actions

    def _health_sweep(self, snap: FleetSnapshot, now: datetime) -> None:
        """H11: a Healthy or Soaked host whose probes have not all passed for the
        threshold becomes Failed; its closure is quarantined on its channel and open
        dispatches of that closure are cancelled (their confirms then get 410)."""
        store = self._store()
        for host, (_at, req) in self.mem.checkins.items():
            # Only hosts failing now or in a streak can change; most pass, and for them
            # no row needs reading (a tick visits every host of the fleet).
            if host not in self.mem.failing_since and not health.is_failing(req.health_probes):
                continue
            decl = snap.fleet.hosts.get(host)
            rid = snap.rollout_ids.get(decl.channel) if decl else None
            part = store.participation(rid, host) if rid is not None else None
            tracked = part is not None and part.host_state in (HEALTHY, SOAKED)
            failing = tracked and health.is_failing(req.health_probes)
            since = health.failing_since(self.mem.failing_since.get(host), failing, now)
            if since is None:
                self.mem.failing_since.pop(host, None)
                continue
            self.mem.failing_since[host] = since
            failed = health.has_failed(since, now, self.settings.health_failure)
            if not failed or decl is None or rid is None:
                continue
            closure = req.current_generation.closure_hash
            store.set_participation(rid, host, FAILED, now=now)
            store.quarantine(decl.channel, closure, now=now, reason="sustained probe failures")
            cancelled = store.cancel_open_dispatches(closure, now=now)
            self.mem.failing_since.pop(host, None)
            log.warning(
                "health: host failed after sustained probe failures rollout=%s closure=%s "
                "quarantined channel=%s cancelled=%d host=%s",
                rid,
                closure,
                decl.channel,
                cancelled,
                host,
            )

    def _apply(
        self, snap: FleetSnapshot, observed: Observed, actions: list[act.Action], now: datetime
    ) -> None:
        store = self._store()
        self.mem.last_deferrals = next_last_deferrals(observed, actions)
        for a in actions:
            match a:
                case act.OpenRollout(channel=channel, target_ref=rid):
                    store.ensure_rollout(rid, channel, now=now)
                    log.info("reconcile: open_rollout channel=%s rollout=%s", channel, rid)
                case act.SoakHost(rollout=rid, host=host):
                    store.set_participation(rid, host, SOAKED, now=now)
                    log.info("reconcile: soak_host rollout=%s host=%s", rid, host)
                case act.PromoteWave(rollout=rid, new_wave=wave):
                    store.set_current_wave(rid, wave)
                    log.info("reconcile: promote_wave rollout=%s new_wave=%d", rid, wave)
                case act.ConvergeRollout(rollout=rid):
                    store.converge_rollout(rid, now=now)
                    log.info("reconcile: converge_rollout rollout=%s", rid)
                case act.HaltRollout(rollout=rid, reason=reason):
                    if store.halt_rollout(rid):
                        log.warning("reconcile: halt_rollout rollout=%s reason=%s", rid, reason)
                case act.RollbackHost(rollout=rid, host=host):
                    log.info("reconcile: rollback_host rollout=%s host=%s", rid, host)
                case _:
                    pass

    def sweep(self, *, now: datetime) -> int:
        """Rollback timer: pending rows past their deadline become `rolled-back`."""
        expired = self._store().sweep_expired(now=now)
        for row in expired:
            log.info(
                "rolling back: confirm window expired rollout=%s host=%s deadline=%s",
                row.rollout_id,
                row.hostname,
                row.confirm_deadline_text,
            )
        return len(expired)

    def prune(self, *, now: datetime) -> None:
        self._store().prune(now=now)
        log.info("prune timer: hourly sweep complete")

    # --- reads --------------------------------------------------------------------

    def channel_info(self, name: str) -> dict[str, Any]:
        snap = self._snapshot()
        ch = snap.fleet.channels.get(name)
        if ch is None:
            raise ApiError(404, "not found", f"channel {name!r} is not declared")
        return {
            "name": name,
            "declared_ci_commit": snap.ci_commit,
            "signed_at": snap.signed_at_text,
            "freshness_window_minutes": ch.freshness_window,
        }

    def host_status(self, *, now: datetime) -> list[wire.HostStatusEntry]:
        snap = self._snapshot()
        store = self._store()
        out = []
        for name in sorted(set(snap.fleet.hosts) | set(self.mem.checkins)):
            decl = snap.fleet.hosts.get(name)
            seen = self.mem.checkins.get(name)
            current = seen[1].current_generation.closure_hash if seen else None
            rid = snap.rollout_ids.get(decl.channel) if decl else None
            part = store.participation(rid, name) if rid else None
            op = store.latest_dispatch(name)
            out.append(
                wire.HostStatusEntry(
                    hostname=name,
                    channel=decl.channel if decl else None,
                    declared_closure_hash=wire.ClosureHash(decl.closure_hash)
                    if decl and decl.closure_hash
                    else None,
                    current_closure_hash=current,
                    pending_closure_hash=seen[1].pending_generation.closure_hash
                    if seen and seen[1].pending_generation
                    else None,
                    last_checkin_at=seen[0] if seen else None,
                    last_rollout_id=op.rollout_id if op else None,
                    converged=bool(decl and current is not None and current == decl.closure_hash),
                    last_uptime_secs=seen[1].uptime_secs if seen else None,
                    clock_skew_secs=(
                        clockskew.skew_secs(seen[1].sent_at, seen[0])
                        if seen and seen[1].sent_at is not None
                        else None
                    ),
                    rollout_state=part.host_state if part else None,
                    pending_reboot=bool(op and op.state == dec.DEFERRED),
                    pin=decl.pin if decl else None,
                )
            )
        return out

    def rollouts_in_flight(self) -> list[dict[str, Any]]:
        snap = self._snapshot()
        observed = self.observed(self.last_tick_at or snap.signed_at)
        return [
            {
                "rolloutId": ro.id,
                "channel": ro.channel,
                "currentWave": ro.current_wave,
                "state": ro.state,
                "hostStates": dict(ro.host_states),
            }
            for ro in observed.active_rollouts
            if ro.terminal_at is None
        ]

    def manifest(self, rid: str) -> tuple[bytes, bytes | None]:
        snap = self._snapshot()
        if len(rid) != 64 or any(c not in "0123456789abcdef" for c in rid):
            raise ApiError(404, "not found", "rollout id must be 64 lowercase hex characters")
        found = self.manifest_source(rid) if self.manifest_source is not None else None
        if found is not None:
            body, sig = found
            # The CP relays CI's signed manifest and checks only that it is the one named.
            if not rollout_id_matches(canonicalize(body, source=f"rollout {rid}"), rid):
                raise ApiError(500, "internal", f"manifest source: content does not hash to {rid}")
            return body, sig
        m = snap.manifest_by_id(rid)
        if m is None:
            raise ApiError(404, "not found", f"unknown rollout {rid}")
        return manifest_bytes(m), None
