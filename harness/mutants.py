"""Mutants: re-creations of fixed bugs, injected only while the harness proves that a
scenario catches them. Never imported by production code."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any
from unittest import mock

Mutant = Callable[[], AbstractContextManager[object]]


def sweep_raw_text_compare() -> AbstractContextManager[object]:
    """Seed 000 rollback timer: compare the stored RFC 3339 deadline as raw text with
    SQLite's space-separated datetime. `T` sorts above a space, so a same-day deadline
    never looks expired. (`datetime(:now)` keeps the run's own clock.)"""
    from nixfleet.cp import store

    return mock.patch.object(
        store, "SWEEP_PREDICATE", "state = 'pending' AND confirm_deadline < datetime(:now)"
    )


MUTANTS: dict[str, Mutant] = {
    "sweep-raw-text-compare": sweep_raw_text_compare,
}


def snapshot_replaced_by_older() -> AbstractContextManager[object]:
    """Seed 000 stair-step: any verified artifact replaces the snapshot, so the baked
    build-time artifact (one release behind) walks the CP back."""
    from nixfleet.cp import service

    return mock.patch.object(service, "replaces", lambda *_args, **_kwargs: True)


@contextlib.contextmanager
def report_hash_prefix() -> Iterator[None]:
    """Seed 000 ghost loop: the agent reports only the 32-char hash before the first
    `-` of its running system, never equal to the full basename the CP declares, while
    its switch and confirm go through ("activation appears successful but never
    settles"). Put back where every agent shell turns its checkin into the body
    (`wire.dump_checkin_request`): the real agent's own reading of its links (switch
    verification, rollback) stays right, as the seed's did. The CP of the seed took
    any string as a closure; this project's wire grammar would refuse the short form
    with a 400 (a second defence, tested on its own), so the mutant puts the lax parser
    back too, and the ghost loop itself is what the scenario must catch."""
    from dataclasses import replace

    from nixfleet.core import closure, idents, wire

    dump = wire.dump_checkin_request

    def short(c: wire.CheckinRequest) -> dict[str, Any]:
        gen = c.current_generation
        prefix = closure.ClosureHash(gen.closure_hash.split("-", 1)[0])
        return dump(replace(c, current_generation=replace(gen, closure_hash=prefix)))

    lax = idents.Grammar("any string", lambda value: True)
    with (
        mock.patch.object(wire, "dump_checkin_request", short),
        mock.patch.object(wire, "CLOSURE_HASH", lax),
    ):
        yield


def _confirm_verdict_as(was: str, now: str) -> AbstractContextManager[object]:
    """The confirm guard answering `now` wherever it decides `was` (`ConfirmVerdict`
    member names), every other verdict as shipped."""
    from nixfleet.core import dispatch

    original = dispatch.decide_confirm
    V = dispatch.ConfirmVerdict

    def swapped(*args: object, **kwargs: object) -> dispatch.ConfirmVerdict:
        verdict = original(*args, **kwargs)  # type: ignore[arg-type]
        return V[now] if verdict is V[was] else verdict

    return mock.patch.object(dispatch, "decide_confirm", swapped)


def no_orphan_recovery() -> AbstractContextManager[object]:
    """Seed 001 before the fix: after a DB wipe a confirm with no row gets 410 and the
    host rolls back a good activation."""
    return _confirm_verdict_as("ORPHAN", "REJECT")


def no_rollback_signal() -> AbstractContextManager[object]:
    """rollback-and-halt that never tells a Failed host to roll back."""
    from nixfleet.core import dispatch

    return mock.patch.object(dispatch, "rollback_signal", lambda *a, **k: None)


def prime_from_build_time() -> AbstractContextManager[object]:
    """Seed 000 stair-step as it was: the CP primes from the artifact baked into its
    closure (always one release behind) and meets the forge only at its first poll, so
    after every restart it serves, and dispatches, the previous release for a while."""
    from nixfleet.core.snapshot import SOURCE_BUILD_TIME
    from nixfleet.cp import lifecycle

    return mock.patch.object(lifecycle, "PRIME_ORDER", (SOURCE_BUILD_TIME,))


def machine_id_from_raw_cn() -> AbstractContextManager[object]:
    """The CP's identity check takes any certificate CN as the machine id, the
    `agent-<id>.<suffix>` wrapper neither checked nor stripped."""
    from nixfleet.cp import issuance

    return mock.patch.object(issuance, "extract_machine_id", lambda cn, _suffix: cn)


def attestation_rejected() -> AbstractContextManager[object]:
    """The CP's H15 check refuses every `lastConfirmedAt` attestation signature."""
    from nixfleet.cp.service import CpService

    return mock.patch.object(CpService, "_attestation_ok", lambda *_args: False)


def checkin_parse_drops_probes() -> AbstractContextManager[object]:
    """The CP's checkin parser loses the body's `healthProbes`."""
    from dataclasses import replace

    from nixfleet.core import wire

    parse = wire.parse_checkin_request

    def lossy(value: object, *, source: str = "checkin body") -> wire.CheckinRequest:
        return replace(parse(value, source=source), health_probes=())

    return mock.patch.object(wire, "parse_checkin_request", lossy)


MUTANTS.update(
    {
        "snapshot-replaced-by-older": snapshot_replaced_by_older,
        "prime-from-build-time": prime_from_build_time,
        "report-hash-prefix": report_hash_prefix,
        "no-orphan-recovery": no_orphan_recovery,
        "no-rollback-signal": no_rollback_signal,
        "machine-id-from-raw-cn": machine_id_from_raw_cn,
        "attestation-rejected": attestation_rejected,
        "checkin-parse-drops-probes": checkin_parse_drops_probes,
    }
)


@contextlib.contextmanager
def injected(name: str) -> Iterator[None]:
    """Apply a mutant for the duration of the block."""
    with MUTANTS[name]():
        yield


def late_confirm_accepted() -> AbstractContextManager[object]:
    """Reference `deadline-expiry` Old: the confirm guard takes a confirm for its row
    after the row's deadline (or after the sweep rolled it back) and answers 204."""
    return _confirm_verdict_as("EXPIRED", "ACCEPT")


MUTANTS["late-confirm-accepted"] = late_confirm_accepted


@contextlib.contextmanager
def quarantine_gate_reads_reported() -> Iterator[None]:
    """Reference split brain (`quarantine-gate-split-brain`, commits 0788a67, 9f26f91):
    the quarantine gate looks at the closure the host reports running, not the one the
    fleet declares for it. A host back on its old system after rolling back a
    quarantined closure passes the gate, so the next rollout hands it the same bad
    closure again (dispatch → probe fail → rollback → the same closure a poll later)."""
    from nixfleet.core import gates
    from nixfleet.cp.service import CpService

    reported: dict[str, str] = {}
    checkin = CpService.checkin

    def remember(self: CpService, req: Any, *, now: Any) -> Any:
        reported[req.hostname] = str(req.current_generation.closure_hash)
        return checkin(self, req, now=now)

    def by_report(q: Any) -> str | None:
        closure = reported.get(q.host)
        if closure is not None and closure in q.view.quarantined_closures.get(q.channel, ()):
            return gates.quarantine_reason(q.channel, closure)
        return None

    swapped = tuple((n, by_report if n == "quarantine" else g) for n, g in gates.GATES)
    with (
        mock.patch.object(CpService, "checkin", remember),
        mock.patch.object(gates, "GATES", swapped),
    ):
        yield


MUTANTS["quarantine-gate-reads-reported"] = quarantine_gate_reads_reported


def nixos_rebuild_system_activation() -> AbstractContextManager[object]:
    """Seed 000 "Agent fails activation with unrecognized arguments: --system": the
    agent's switch is `nixos-rebuild switch --system <path>`, a flag nixos-rebuild-ng
    (NixOS 26.05) renamed `--store-path`, instead of the closure's own
    `bin/switch-to-configuration switch` (decisions: never `nixos-rebuild`). Run as
    the inline switch is (own session, output to the switch log); rollbacks unchanged."""
    import asyncio
    import os
    import tempfile
    from pathlib import Path

    from nixfleet.agent import activation
    from nixfleet.agent.activation import NixActivator

    fire = NixActivator._fire

    async def via_nixos_rebuild(self: NixActivator, closure: Any, unit: str) -> Any:
        if unit != activation.SWITCH_UNIT:
            return await fire(self, closure, unit)
        log_path = self.switch_log
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="nixfleet-switch-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        argv = ["nixos-rebuild", "switch", "--system", activation.store_path(closure)]
        try:
            with open(log_path, "wb") as log_fh:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_fh,
                    stderr=log_fh,
                    start_new_session=True,
                )
        except OSError as exc:
            return activation.SwitchFailed(
                phase=activation.SWITCH_EXIT,
                exit_code=127,
                stderr_tail=f"cannot run {argv[0]} ({exc})",
            )
        return activation._Fired(
            unit=unit, proc=proc, log=log_path, temporary=self.switch_log is None
        )

    return mock.patch.object(NixActivator, "_fire", via_nixos_rebuild)


MUTANTS["nixos-rebuild-system-activation"] = nixos_rebuild_system_activation


def reconcile_never_ticks() -> AbstractContextManager[object]:
    """Seed 001 Verify 1, Old: the reconcile loop dead or stuck before its first tick.
    The CP primes, listens and answers, but no tick ever lands, so `/healthz` keeps
    `last_tick_at` null."""
    from nixfleet.cp import lifecycle

    return mock.patch.object(lifecycle.Lifecycle, "tick", lambda self, *, now: None)


MUTANTS["reconcile-never-ticks"] = reconcile_never_ticks


def revocations_replay_skipped() -> AbstractContextManager[object]:
    """Seed 001 Verify 3 Old: the CP treats the signed revocations list as a change
    feed. The first list it verifies after a start is taken as already in
    `cert_revocations` (readiness satisfied, nothing written); only a later, different
    list is applied. Before a wipe that looks right; after it the list in force is
    never replayed into the new DB and revoked certificates pass again."""
    from nixfleet.cp.service import CpService

    original = CpService.offer_revocations
    baselines: dict[int, bytes] = {}  # one per service (process, or simulated boot)

    def offer(self: CpService, raw: bytes, signature: bytes, *, now: Any) -> None:
        seen = baselines.get(id(self))
        baselines[id(self)] = raw
        if seen is None or seen == raw:
            self.mem.revocations_primed = True
            return
        original(self, raw, signature, now=now)

    return mock.patch.object(CpService, "offer_revocations", offer)


MUTANTS["revocations-replay-skipped"] = revocations_replay_skipped


def cp_trusts_body_hostname() -> AbstractContextManager[object]:
    """Reference identity-binding Old: the CP takes the body's `hostname` as the host,
    whatever certificate the call came with (no CN ↔ body check)."""
    from nixfleet.cp import endpoints

    return mock.patch.object(endpoints, "same_host", lambda peer, hostname: None)


MUTANTS["cp-trusts-body-hostname"] = cp_trusts_body_hostname


ENROLL_WINDOW_SECS = 1.0
"""How far the check-then-record mutant widens the gap between check and record."""


@contextlib.contextmanager
def check_then_record_enroll_nonce() -> Iterator[None]:
    """Reference harness-enroll-replay Old: enroll checks that the nonce is unspent, then
    records it in a separate step that claims nothing (insert-or-ignore, its outcome
    unread), while requests run concurrently (the reference's threaded server; here the
    handler's service call goes to a worker thread, where this CP runs it on its event
    loop). The gap between check and record is widened by ENROLL_WINDOW_SECS, so two
    enrolls sent together both pass the check, as they could under load."""
    import asyncio
    import time

    from aiohttp import web

    from nixfleet.core import wire
    from nixfleet.cp import endpoints, http, store

    used = store.Store.nonce_used

    def check(self: store.Store, nonce: str) -> bool:
        seen = used(self, nonce)
        if not seen:
            time.sleep(ENROLL_WINDOW_SECS)
        return seen

    def record(self: store.Store, nonce: str, hostname: str, *, now: Any) -> bool:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO token_replay (nonce, hostname, first_seen) VALUES (?, ?, ?)",
                (nonce, hostname, store._text(now)),
            )
        return True

    async def enroll(request: web.Request) -> web.Response:
        body = endpoints.decode(await request.read(), "enroll body")
        req = wire.parse_enroll_request(body, source="enroll body")
        service = request.app[http.SERVICE]
        issued = await asyncio.to_thread(service.enroll, req, now=http.utc_now())
        return web.json_response(wire.dump_cert_issued(issued))

    with (
        mock.patch.object(store.Store, "nonce_used", check),
        mock.patch.object(store.Store, "record_nonce", record),
        mock.patch.object(http, "enroll", enroll),
    ):
        yield


MUTANTS["check-then-record-enroll-nonce"] = check_then_record_enroll_nonce


def unknown_confirm_accepted() -> AbstractContextManager[object]:
    """Reference wire-contract Old: a confirm that matches no dispatch row and no
    recoverable orphan is answered as a success (204), hiding that nothing was
    dispatched; the host keeps a closure the CP never sent."""
    return _confirm_verdict_as("REJECT", "ACCEPT")


MUTANTS["unknown-confirm-accepted"] = unknown_confirm_accepted


def rollback_via_run_current_system() -> AbstractContextManager[object]:
    """Reference before `572a10c`: the rollback, after `nix-env --rollback`, runs the
    switch binary under `/run/current-system` (the agent's current-system link), still
    the bad closure, which re-activates itself and exits 0, instead of the rolled-back
    generation's own store path. Forward switches unchanged."""
    from nixfleet.agent import activation
    from nixfleet.agent.activation import NixActivator

    fire = NixActivator._fire

    async def from_current_link(self: NixActivator, closure: Any, unit: str) -> Any:
        if unit == activation.ROLLBACK_UNIT:
            closure = self.current_system() or closure  # what the link resolves to
        return await fire(self, closure, unit)

    return mock.patch.object(NixActivator, "_fire", from_current_link)


MUTANTS["rollback-via-run-current-system"] = rollback_via_run_current_system


def strict_low_s_verifier() -> AbstractContextManager[object]:
    """Seed 000 "Verify fails with BadSignature": the P-256 verifier refuses high-s
    signatures (s > n/2) instead of normalising them, so about half of a TPM's
    signatures fail on every tick."""
    from nixfleet.core import signing

    normalising = signing._verify_p256

    def strict(raw: bytes, message: bytes, signature: bytes) -> bool:
        if int.from_bytes(signature[32:], "big") > signing.P256_ORDER // 2:
            return False
        return normalising(raw, message, signature)

    return mock.patch.object(signing, "_verify_p256", strict)


MUTANTS["strict-low-s-verifier"] = strict_low_s_verifier


@contextlib.contextmanager
def signature_content_ignored() -> Iterator[None]:
    """Tampered bytes accepted: the verifier takes any well-formed (64-byte)
    signature, its content never checked against the key and the message."""
    from nixfleet.core import signing, verify

    def well_formed(key: signing.PublicKey, message: bytes, signature: bytes) -> bool:
        return len(signature) == signing.SIGNATURE_LEN

    with (
        mock.patch.object(signing, "verify_signature", well_formed),
        mock.patch.object(verify, "verify_signature", well_formed),
    ):
        yield


MUTANTS["signature-content-ignored"] = signature_content_ignored


def no_future_dating_check() -> AbstractContextManager[object]:
    """Future-signed artifacts accepted: the freshness rules have no upper bound on
    `signedAt`, so artifacts pre-signed with a stolen key stay valid until then."""
    from nixfleet.core import freshness

    return mock.patch.object(freshness, "is_future_dated", lambda *_a, **_k: False)


MUTANTS["no-future-dating-check"] = no_future_dating_check


def enroll_replay_after_wipe() -> AbstractContextManager[object]:
    """Reference #96 Old: spent bootstrap nonces live only in state.db. The operator
    journal still records them, but its replay at start puts none back, so after seed
    001's wipe a spent token enrolls again while its allowlist entry is live."""
    from nixfleet.cp.store import Store

    return mock.patch.object(Store, "restore_nonces", lambda self, spent: 0)


MUTANTS["enroll-replay-after-wipe"] = enroll_replay_after_wipe


def migration_name_drift() -> AbstractContextManager[object]:
    """Seed 000 "SQLite migration error on CP boot", the check put out: the migrator
    compares only version numbers, so a DB whose history names migration 1 by its v0.1
    name (`V1__initial_schema`, another checksum) is taken as up to date and the CP
    serves from a schema it did not write."""
    from nixfleet.cp import migrate

    def by_version(applied: Any, migrations: Any) -> list[migrate.Migration]:
        done = {a.version for a in applied}
        return [m for m in migrations if m.version not in done]

    return mock.patch.object(migrate, "pending_migrations", by_version)


MUTANTS["migration-name-drift"] = migration_name_drift


@contextlib.contextmanager
def unobserved_probe_passing() -> Iterator[None]:
    """Reference commit 0788a67 Old: a Healthy host soaks on probes nobody has run yet
    (every probe `unknown` counted as passing, so with soak 0 it went Soaked at once),
    and permissive mode ignored a failing probe."""
    from nixfleet.core import health

    passing = health.probes_passing

    def lax(mode: str | None, probes: Any) -> bool:
        return True if mode == "permissive" else passing(mode, probes)

    with (
        mock.patch.object(health, "probes_observed", lambda *_a, **_k: True),
        mock.patch.object(health, "probes_passing", lax),
    ):
        yield


MUTANTS["unobserved-probe-passing"] = unobserved_probe_passing


def csr_not_bound_to_declared_key() -> AbstractContextManager[object]:
    """Reference enroll/renew Old: the CP signs whatever key a valid token or agent
    certificate comes with, never comparing the CSR's key with the host's declared SSH
    host key (`hosts.<h>.pubkey`) nor asking that the host be declared."""
    from nixfleet.cp.service import CpService

    return mock.patch.object(CpService, "_check_declared_key", lambda self, host, csr: None)


MUTANTS["csr-not-bound-to-declared-key"] = csr_not_bound_to_declared_key


def agent_gives_up_after_refusal() -> AbstractContextManager[object]:
    """Seed 001 Verify 4, Old: an agent gives up on a CP that refused it. After a failed
    checkin (the CP down for the DR wipe) it waits a day, as if it had exited and stayed
    down until the next boot, so the agents that polled while the CP was down never
    come back. Patched in the agent's session (`nixfleet.core.agent`), which both the
    daemon and the simulated hosts pump."""
    from datetime import timedelta

    from nixfleet.core import agent

    return mock.patch.object(
        agent, "checkin_backoff", lambda poll, failures, jitter: timedelta(days=1)
    )


MUTANTS["agent-gives-up-after-refusal"] = agent_gives_up_after_refusal


@contextlib.contextmanager
def enroll_ignores_allowlist() -> Iterator[None]:
    """Reference before #96: enroll accepts any validly signed, unspent token; the signed
    bootstrap-nonces allowlist is fetched (readiness waits for it) but never consulted."""
    from nixfleet.cp.service import CpService

    original = CpService.enroll

    def enroll(self: CpService, req: Any, *, now: Any) -> Any:
        listed, self.mem.allowlist = self.mem.allowlist, None
        try:
            return original(self, req, now=now)
        finally:
            self.mem.allowlist = listed

    with mock.patch.object(CpService, "enroll", enroll):
        yield


MUTANTS["enroll-ignores-allowlist"] = enroll_ignores_allowlist


def stale_record_reconfirmed() -> AbstractContextManager[object]:
    """Reference boot recovery before the fix (`harness-boot-recovery`): a dispatch
    record is confirmed at boot (and every idle tick) whatever the host runs, so a
    record the running system has left (a switch that died with its agent) is POSTed
    as a confirm instead of being dropped (lifecycle §5.8)."""
    from dataclasses import replace

    from nixfleet.core import agent
    from nixfleet.core.deadline import deadline_passed

    recover = agent._recover

    def reconfirm(state: agent.AgentState, now: Any) -> Any:
        d = state.persisted.last_dispatched
        if d is None or d.confirm_deadline is None:
            return recover(state, now)
        state = replace(state, confirm_deadline=d.confirm_deadline)
        if deadline_passed(d.confirm_deadline, now):
            return agent._watchdog_rollback(state)
        return agent._send_confirm(state, now)

    return mock.patch.object(agent, "_recover", reconfirm)


MUTANTS["stale-record-reconfirmed"] = stale_record_reconfirmed


def org_root_previous_ignored() -> AbstractContextManager[object]:
    """Seed 002 rotation Old: the grace window not honoured, as if `previous` had been
    dropped with the rotation: bootstrap tokens verify only against `orgRootKey.current`,
    so every token minted before the rotation is refused at once."""
    from nixfleet.core import token
    from nixfleet.core.trust import PREVIOUS

    keys_at = token.keys_at

    def current_only(slot: Any, now: Any) -> Any:
        return [k for k in keys_at(slot, now) if k.role != PREVIOUS]

    return mock.patch.object(token, "keys_at", current_only)


MUTANTS["org-root-previous-ignored"] = org_root_previous_ignored


@contextlib.contextmanager
def baked_artifact_unverified() -> Iterator[None]:
    """Seed 001 "When this fails" Old: the CP takes the artifact baked into its closure
    on trust (it was built by our own CI), so with the forge down a baked artifact with
    a flipped byte becomes the snapshot and checkins get targets from it. Only the
    build-time offer skips the signature; the forge's artifacts are still verified."""
    from nixfleet.core import verify
    from nixfleet.cp.lifecycle import Lifecycle

    offer_build_time = Lifecycle.offer_build_time
    checking = verify._verifying_key

    def trusting(usable: Any, in_force: Any, message: bytes, signature: bytes) -> Any:
        return usable[0] if usable else checking(usable, in_force, message, signature)

    def unverified(self: Lifecycle, *, now: Any) -> bool:
        with mock.patch.object(verify, "_verifying_key", trusting):
            return offer_build_time(self, now=now)

    with mock.patch.object(Lifecycle, "offer_build_time", unverified):
        yield


MUTANTS["baked-artifact-unverified"] = baked_artifact_unverified


def revocation_replay_wipes_hand_inserted() -> AbstractContextManager[object]:
    """Seed 002 revoke recipe, hazard 2: each signed-sidecar poll deletes every
    `cert_revocations` row absent from the signed list, whatever its `source`, so a
    row the operator inserted by hand vanishes at the next poll."""
    from nixfleet.cp.store import Store

    original = Store.replace_sidecar_revocations

    def wipe(self: Store, entries: Any, *, now: Any) -> tuple[int, int]:
        listed = list(entries)
        applied, pruned = original(self, listed, now=now)
        names = {e.hostname for e in listed}
        with self._tx() as conn:
            rows = [str(r[0]) for r in conn.execute("SELECT hostname FROM cert_revocations")]
            gone = [(h,) for h in rows if h not in names]
            conn.executemany("DELETE FROM cert_revocations WHERE hostname = ?", gone)
        return applied, pruned + len(gone)

    return mock.patch.object(Store, "replace_sidecar_revocations", wipe)


MUTANTS["revocation-replay-wipes-hand-inserted"] = revocation_replay_wipes_hand_inserted


def agent_skips_target_freshness() -> AbstractContextManager[object]:
    """Reference before the fix: stale intent activated. The agent never compares the
    target's `signedAt` with its channel's freshness window (+60 s)."""
    from nixfleet.core import agent

    return mock.patch.object(agent, "is_target_stale", lambda *_a, **_k: False)


MUTANTS["agent-skips-target-freshness"] = agent_skips_target_freshness


def cp_logs_enroll_token() -> AbstractContextManager[object]:
    """Reference secret-hygiene Old: the CP logs the bootstrap token an enroll brought
    (signature included) to its journal."""
    import json
    import logging

    from nixfleet.cp.service import CpService

    original = CpService.enroll

    def enroll(self: CpService, req: Any, *, now: Any) -> Any:
        token = json.dumps(dict(req.token), sort_keys=True)
        logging.getLogger("nixfleet.cp").info("enroll received token=%s", token)
        return original(self, req, now=now)

    return mock.patch.object(CpService, "enroll", enroll)


MUTANTS["cp-logs-enroll-token"] = cp_logs_enroll_token


NOT_READY_WORDS = ("control plane not ready", "awaiting the first verified")
"""How a checkin refused by the readiness gate reads (the daemon's HTTP error, the
simulated host's ApiError message)."""


def agent_exits_on_503() -> AbstractContextManager[object]:
    """Reference before `1a3e1f8`: the agent exits when the CP answers a checkin with the
    cold-start 503 ("control plane not ready"); under systemd a respawn loop. Any
    other checkin failure is retried as shipped."""
    from nixfleet.core import agent
    from nixfleet.core.agent_events import CheckinFailed

    key = (agent.Phase.CHECKING_IN, CheckinFailed)
    retry = agent.TRANSITIONS[key]

    def exit_when_not_ready(state: Any, event: CheckinFailed, now: Any) -> Any:
        if any(words in event.reason for words in NOT_READY_WORDS):
            raise SystemExit(f"checkin refused, control plane not ready: {event.reason}")
        return retry(state, event, now)

    return mock.patch.dict(agent.TRANSITIONS, {key: exit_when_not_ready})


MUTANTS["agent-exits-on-503"] = agent_exits_on_503


def preflight_skips_build_time() -> AbstractContextManager[object]:
    """Seed 001 pre-flight 2 left out: `nixfleet dr preflight` never checks the
    build-time fallback (`--artifact`/`--signature`/`--trust-file`), so it lets the
    operator wipe with a broken fallback and a forge that may yet go down."""
    from nixfleet.cli import dr

    return mock.patch.object(dr, "_build_time", lambda cfg, trust: "build-time not checked")


MUTANTS["preflight-skips-build-time"] = preflight_skips_build_time


def manifest_signature_cut() -> AbstractContextManager[object]:
    """The reference's responder bug: the CP relays rollout manifest signatures cut to
    54 bytes (the agent's verify then fails on every manifest)."""
    from nixfleet.cp.service import CpService

    relay = CpService.manifest

    def cut(self: CpService, rid: str) -> tuple[bytes, bytes | None]:
        body, sig = relay(self, rid)
        return body, None if sig is None else sig[:54]

    return mock.patch.object(CpService, "manifest", cut)


MUTANTS["manifest-signature-cut"] = manifest_signature_cut


def duplicate_dispatch_rows() -> AbstractContextManager[object]:
    """Reference `CPT/dispatch.rs` Old: a host checking in again while its dispatch is
    pending gets a fresh dispatch, a second row for the same (host, rollout), instead of
    nothing new (here: the pending row's target re-offered)."""
    from dataclasses import replace

    from nixfleet.core import dispatch

    original = dispatch.decide_checkin

    def again(*args: Any, **kwargs: Any) -> dispatch.CheckinDecision:
        decision = original(*args, **kwargs)
        if isinstance(decision, dispatch.Dispatch) and decision.reoffer:
            return replace(decision, reoffer=False)
        return decision

    return mock.patch.object(dispatch, "decide_checkin", again)


MUTANTS["duplicate-dispatch-rows"] = duplicate_dispatch_rows


@contextlib.contextmanager
def rollout_id_unbound() -> Iterator[None]:
    """Manifest accepted under another id: neither the CP's relay nor the agent's check
    compares the rolloutId with the SHA-256 of the manifest's canonical bytes."""
    from nixfleet.core import verify
    from nixfleet.cp import service

    with (
        mock.patch.object(verify, "rollout_id_matches", lambda *_a: True),
        mock.patch.object(service, "rollout_id_matches", lambda *_a: True),
    ):
        yield


MUTANTS["rollout-id-unbound"] = rollout_id_unbound


@contextlib.contextmanager
def no_poll_after_failed_prime() -> Iterator[None]:
    """Seed 001 "Recovery > 10× target", Old: a CP whose channel-refs prime failed (the
    forge down or refusing its token at the restart) serves its fallback and never asks
    the forge again, so the repair never reaches it and recovery stretches silently."""
    from nixfleet.cp import lifecycle

    Lc = lifecycle.Lifecycle
    prime, poll = Lc.prime, Lc.poll

    def primed(self: Any, fetched: Any, *, now: Any) -> None:
        got = fetched.get(lifecycle.CHANNEL_REFS)
        self.gave_up = got is None or isinstance(got, lifecycle.UpstreamError)
        prime(self, fetched, now=now)

    def polled(self: Any, fetched: Any, *, now: Any) -> None:
        if getattr(self, "gave_up", False):
            fetched = {k: v for k, v in fetched.items() if k != lifecycle.CHANNEL_REFS}
        poll(self, fetched, now=now)

    with mock.patch.object(Lc, "prime", primed), mock.patch.object(Lc, "poll", polled):
        yield


MUTANTS["no-poll-after-failed-prime"] = no_poll_after_failed_prime


def snapshot_hash_swapped_apart() -> AbstractContextManager[object]:
    """Reference `concurrent-checkin` Old: the snapshot and its hash (with the rollout
    ids projected from it) were swapped separately, so readers between the two saw a
    torn pair. Put back as the CP's snapshot build: a new fleet goes live with the
    previous one's hash, rollout ids and manifests; the next poll (the hash now
    differing from the artifact's) completes the swap."""
    from dataclasses import replace

    from nixfleet.core.snapshot import FleetSnapshot
    from nixfleet.cp import service

    build = service.snapshot_from_verified
    previous: list[FleetSnapshot] = []

    def torn(*args: Any, **kwargs: Any) -> FleetSnapshot:
        fresh = build(*args, **kwargs)
        old = previous[-1] if previous else fresh
        previous.append(fresh)
        return replace(
            fresh,
            fleet_hash=old.fleet_hash,
            rollout_ids=old.rollout_ids,
            manifests=old.manifests,
        )

    return mock.patch.object(service, "snapshot_from_verified", torn)


MUTANTS["snapshot-hash-swapped-apart"] = snapshot_hash_swapped_apart


def module_drops_rollouts_dir() -> AbstractContextManager[object]:
    """Reference harness-module-rollouts-wire, Old: the CP's module leaves
    `--rollouts-dir` off the command line, so the CP has no source of CI's signed
    manifests: it re-serialises what its snapshot projects and has no signature."""
    from dataclasses import replace

    from nixfleet.cp import config

    parse = config.config_from_args

    def dropped(args: Any) -> config.CpConfig:
        return replace(parse(args), rollouts_dir=None)

    return mock.patch.object(config, "config_from_args", dropped)


MUTANTS["module-drops-rollouts-dir"] = module_drops_rollouts_dir


@contextlib.contextmanager
def snapshot_signature_unchecked() -> Iterator[None]:
    """Reference `channel_refs_gitops.rs` Old: the CP's forge poll installs an artifact
    whose signature no trusted key verifies. Put back in the CP's artifact check
    (`service.verify_artifact`): the signing key is taken as found. The verifier's
    memo is cleared around it, so no lax result outlives the mutant."""
    from nixfleet.core import verify
    from nixfleet.cp import service

    check = service.verify_artifact

    def lax(*args: Any, **kwargs: Any) -> verify.Verified:
        with mock.patch.object(verify, "_verifying_key", lambda usable, *_: usable[0]):
            verify._authenticate.cache_clear()
            try:
                return check(*args, **kwargs)
            finally:
                verify._authenticate.cache_clear()

    with mock.patch.object(service, "verify_artifact", lax):
        yield


MUTANTS["snapshot-signature-unchecked"] = snapshot_signature_unchecked


def bundled_roots_only_upstream_tls() -> AbstractContextManager[object]:
    """Seed 000 "Forgejo poll fails with TLS handshake error", Old: the CP's upstream
    TLS trusts only a bundled list of public roots (webpki-roots in the reference),
    ignoring the OS trust store (`SSL_CERT_FILE`) and `--upstream-ca`, so a forge behind
    a private CA the host trusts is never reached. The distro's Mozilla bundle, read
    from its fixed path, stands in for the compiled-in list."""
    import ssl
    from pathlib import Path

    from nixfleet.cp import runtime

    def bundled(extra_ca: Path | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        mozilla = Path("/etc/ssl/certs/ca-certificates.crt")
        if mozilla.is_file():
            ctx.load_verify_locations(cafile=str(mozilla))
        return ctx

    return mock.patch.object(runtime, "upstream_ssl_context", bundled)


MUTANTS["bundled-roots-only-upstream-tls"] = bundled_roots_only_upstream_tls


def agent_ignores_expired_cert() -> AbstractContextManager[object]:
    """Seed 001 "Agents don't reconnect", Old: the agent never looks at its certificate's
    notAfter. It presents the expired one (the CP's TLS layer drops it: the log shows a
    bare reset, no cause) and never re-enrols with its bootstrap token."""
    from nixfleet.agent import enroll

    async def never(self: enroll.Identity, now: Any) -> str | None:
        return None

    return mock.patch.object(enroll.Identity, "reenroll_if_expired", never)


MUTANTS["agent-ignores-expired-cert"] = agent_ignores_expired_cert


@contextlib.contextmanager
def manifest_cache_not_persisted() -> Iterator[None]:
    """Seed 004 manifest_cache, Old: the agent's last-good rollout manifests were lost
    with the process, so an agent restarted while the CP was gone had none to verify a
    target against. Put back as the agent's `ManifestCache` keeping them in the
    process's memory instead of `<state-dir>/rollouts/`."""
    from nixfleet.agent import statedir

    held: dict[str, tuple[bytes, bytes]] = {}

    def get(self: Any, rollout_id: str) -> tuple[bytes, bytes] | None:
        self.path(rollout_id)  # the same id check
        return held.get(rollout_id)

    def put(self: Any, rollout_id: str, raw: bytes, signature: bytes) -> None:
        self.path(rollout_id)
        held[rollout_id] = (raw, signature)

    def discard(self: Any, rollout_id: str) -> None:
        held.pop(rollout_id, None)

    with mock.patch.multiple(statedir.ManifestCache, get=get, put=put, discard=discard):
        yield


MUTANTS["manifest-cache-not-persisted"] = manifest_cache_not_persisted


def all_at_once_converges_at_once() -> AbstractContextManager[object]:
    """Reference commit c5a87fa Old: an all-at-once channel (empty wave list) converges
    at the first tick of its rollout, before its hosts run the declared closure."""
    from nixfleet.core import reconcile

    return mock.patch.object(reconcile, "_all_hosts_on_closure", lambda *_a, **_k: True)


MUTANTS["all-at-once-converges-at-once"] = all_at_once_converges_at_once


def terminal_predecessor_blocks() -> AbstractContextManager[object]:
    """Reference commit c3ab9d7 Old: a channel-edge predecessor whose rollout holds no
    host states counts as active even once terminal, so it blocks its successors."""
    from nixfleet.core import observed, rollout_state

    def active(ro: observed.Rollout) -> bool:
        if not ro.host_states:
            return True
        states = ro.host_states.values()
        return ro.terminal_at is None and not all(
            rollout_state.is_terminal_for_ordering(s) for s in states
        )

    return mock.patch.object(observed.Rollout, "is_active_for_ordering", property(active))


MUTANTS["terminal-predecessor-blocks"] = terminal_predecessor_blocks


@contextlib.contextmanager
def all_at_once_early_terminal() -> Iterator[None]:
    """Both Old behaviours of `channel-edge-successor-release` (commits c5a87fa,
    c3ab9d7): the all-at-once predecessor terminal at once, and a terminal predecessor
    without host states blocking its successors."""
    with all_at_once_converges_at_once(), terminal_predecessor_blocks():
        yield


MUTANTS["all-at-once-early-terminal"] = all_at_once_early_terminal


def lint_skips_secrets() -> AbstractContextManager[object]:
    """Seed 000 "CP service flaps after deploy", Old: nothing checked the CP's agenix
    secrets before the deploy, so one agenix could not decrypt surfaced only as the
    service's restart loop. Put back as `check-config` not opening the secret files."""
    from nixfleet.cp import lint

    return mock.patch.object(lint, "secret_problems", lambda _cfg: [])


MUTANTS["lint-skips-secrets"] = lint_skips_secrets


def confirm_window_below_budget() -> AbstractContextManager[object]:
    """`confirm-deadline-cascade` Old (`_control-plane.nix`: 360 s default, unsafe below
    ~310 s): the CP takes any confirm window above its 30 s floor, however far below the
    agents' switch timeout, so a switch outlasting it is rolled back by the CP, answered
    410 and rolled back by its agent."""
    from nixfleet.cp import config

    return mock.patch.object(config, "confirm_window_problem", lambda *_a, **_k: None)


MUTANTS["confirm-window-below-budget"] = confirm_window_below_budget


def dispatch_gate_reconcile_mode() -> AbstractContextManager[object]:
    """`reconciler-gate-parity` Old (reference `lifecycle_parity.rs`): the checkin path
    judges channel edges as the reconciler does, so a predecessor with no recorded
    rollout (deferred itself, or not opened yet after a CP restart) counts as converged
    and its successors are dispatched before it has started."""
    from nixfleet.core import gates

    blocked = gates.is_predecessor_blocked

    def as_reconciler(
        fleet: Any, view: Any, predecessor: str, mode: Any, opened: Any = frozenset()
    ) -> bool:
        return blocked(fleet, view, predecessor, gates.GateMode.RECONCILE, opened)

    return mock.patch.object(gates, "is_predecessor_blocked", as_reconciler)


MUTANTS["dispatch-gate-reconcile-mode"] = dispatch_gate_reconcile_mode
