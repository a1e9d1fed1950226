"""Agent ↔ CP wire bodies (protocol §1.3) and the report event catalogue (§2.7).

Every body is a frozen record with `parse_<x>(value, source=…)` (validates, names the
source and the field on error, ignores unknown keys) and `dump_<x>(record) -> dict`.

Round trips are lossless: optional keys absent in the source stay absent on output
(each record's `absent`), and instants are re-emitted in their original text when
unchanged (each record's hidden `texts`), so parse → dump → JCS reproduces the input.
Instants are aware UTC datetimes; where the text itself is re-embedded in signed data
(`EvaluatedTarget.signedAt`, `CheckinRequest.lastConfirmedAt`) the original string is
also a public field.

Signed payloads (report evidence, the lastConfirmedAt attestation) are built here as
canonical bytes; signing and verifying them is `signing.py`'s job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .canonical import canonical_bytes, sha256_hex
from .closure import CLOSURE_HASH
from .closure import ClosureHash as ClosureHash  # re-exported for wire users
from .errors import ParseError
from .fleet import Pin
from .idents import HOSTNAME, ROLLOUT_ID, TEXT, TOKEN, Grammar
from .jsonfields import Reader
from .protocol import CONFIRM
from .timeutil import format_instant, parse_instant

NEXT_CHECKIN_SECS = 60
CONFIRM_WINDOW_SECS = 360

FETCH_OK = "ok"
FETCH_VERIFY_FAILED = "verify-failed"
FETCH_FAILED = "fetch-failed"
FETCH_NONE = "none"
FETCH_CLOCK_SKEW = "clock-skew"
"""The manifest was refused as future-dated by the agent's own clock: it is the host's
fault and passes once its clock is right, so it holds nothing (issue 9 #13)."""
FETCH_RESULTS = (FETCH_OK, FETCH_VERIFY_FAILED, FETCH_FAILED, FETCH_NONE, FETCH_CLOCK_SKEW)

PROBE_KINDS = ("http", "tcp", "exec")
PROBE_UNKNOWN = "unknown"
PROBE_PASS = "pass"
PROBE_FAIL = "fail"
PROBE_STATUSES = (PROBE_UNKNOWN, PROBE_PASS, PROBE_FAIL)
HEALTH_CHECK_MODES = ("disabled", "permissive", "enforce")

_NO_ABSENT: frozenset[str] = frozenset()


def _absent_field() -> Any:
    return field(default=_NO_ABSENT, compare=False, repr=False)


def _texts_field() -> Any:
    return field(default_factory=dict, compare=False, repr=False)


# --- JSON helpers shared by the core record modules ---------------------------


def absent_keys(r: Reader, *keys: str) -> frozenset[str]:
    """The optional `keys` missing from the object (absent, not null)."""
    return frozenset(k for k in keys if not r.has(k))


def put_optional(out: dict[str, Any], key: str, value: Any, absent: frozenset[str]) -> None:
    """Emit `key` unless it was absent in the source and still carries no value."""
    if key in absent and value in (None, [], {}):
        return
    out[key] = value


def read_instant(r: Reader, key: str, texts: dict[str, str]) -> datetime:
    """A required RFC 3339 instant; its original text is kept in `texts[key]`."""
    text = r.str(key)
    texts[key] = text
    return parse_instant(text, source=r.source, field=r.field(key))


def read_opt_instant(r: Reader, key: str, texts: dict[str, str]) -> datetime | None:
    text = r.opt_str(key)
    if text is None:
        return None
    texts[key] = text
    return parse_instant(text, source=r.source, field=r.field(key))


def instant_text(key: str, value: datetime, texts: Mapping[str, str]) -> str:
    """The original text of `key` if it still denotes `value`, else RFC 3339 `Z`."""
    text = texts.get(key)
    if text is not None and parse_instant(text) == value:
        return text
    return format_instant(value)


def put_instant(
    out: dict[str, Any],
    key: str,
    value: datetime | None,
    texts: Mapping[str, str],
    absent: frozenset[str],
) -> None:
    put_optional(out, key, None if value is None else instant_text(key, value, texts), absent)


def _nullable_str(r: Reader, key: str, grammar: Grammar) -> str | None:
    """A key that must be present but may be null."""
    r.raw(key)
    return _opt_read(r, key, grammar)


def _nullable_int(r: Reader, key: str) -> int | None:
    r.raw(key)
    return r.opt_int(key)


def _opt_one_of(r: Reader, key: str, allowed: tuple[str, ...]) -> str | None:
    if r.opt_str(key) is None:
        return None
    return r.one_of(key, allowed)


def _check_text(what: str, text: str | None, value: datetime | None) -> None:
    if text is None:
        return
    if value is None or parse_instant(text, source=what) != value:
        raise ValueError(f"{what}: text {text!r} does not denote {value!r}")


# --- shared sub-records --------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationRef:
    closure_hash: ClosureHash
    """Full store basename `<hash32>-nixos-system-…`, never the bare hash."""
    boot_id: str
    channel_ref: str | None = None
    absent: frozenset[str] = _absent_field()


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingGeneration:
    closure_hash: ClosureHash


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchOutcome:
    result: str
    """One of FETCH_RESULTS."""
    error: str | None = None
    rollout_id: str | None = None
    absent: frozenset[str] = _absent_field()


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthProbe:
    name: str
    kind: str
    """One of PROBE_KINDS."""
    status: str = PROBE_UNKNOWN
    """One of PROBE_STATUSES."""
    last_run_at: datetime | None = None
    last_pass_at: datetime | None = None
    failure_reason: str | None = None
    absent: frozenset[str] = _absent_field()
    texts: Mapping[str, str] = _texts_field()


@dataclass(frozen=True, slots=True, kw_only=True)
class Activate:
    confirm_window_secs: int = CONFIRM_WINDOW_SECS
    confirm_endpoint: str = CONFIRM


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluatedTarget:
    """What the CP dispatches; `channel_ref` is the rolloutId."""

    closure_hash: ClosureHash
    channel_ref: str
    evaluated_at: datetime
    rollout_id: str
    signed_at: datetime
    freshness_window_secs: int
    wave_index: int | None = None
    activate: Activate | None = None
    compliance_mode: str | None = None
    signed_at_text: str | None = None
    """The fleet's `meta.signedAt` as signed; emitted instead of `signed_at` if given."""
    absent: frozenset[str] = _absent_field()
    texts: Mapping[str, str] = _texts_field()

    def __post_init__(self) -> None:
        _check_text("signedAt", self.signed_at_text, self.signed_at)

    @property
    def signed_at_wire(self) -> str:
        if self.signed_at_text is not None:
            return self.signed_at_text
        return format_instant(self.signed_at)


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackSignal:
    rollout: str
    target_ref: str
    reason: str


# --- checkin -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckinRequest:
    hostname: str
    agent_version: str
    current_generation: GenerationRef
    pending_generation: PendingGeneration | None = None
    last_evaluated_target: EvaluatedTarget | None = None
    last_fetch_outcome: FetchOutcome | None = None
    uptime_secs: int | None = None
    last_confirmed_at: datetime | None = None
    last_confirmed_at_text: str | None = None
    """The attested text (signed as is); emitted instead of `last_confirmed_at` if given."""
    attestation_signature: str | None = None
    health_probes: tuple[HealthProbe, ...] = ()
    health_check_mode: str | None = None
    sent_at: datetime | None = None
    """`sentAt`: the agent's clock when it sent the body; the CP derives the host's
    clock skew from it (absent from older agents)."""
    absent: frozenset[str] = _absent_field()
    texts: Mapping[str, str] = _texts_field()

    def __post_init__(self) -> None:
        _check_text("lastConfirmedAt", self.last_confirmed_at_text, self.last_confirmed_at)

    @property
    def last_confirmed_at_wire(self) -> str | None:
        if self.last_confirmed_at_text is not None:
            return self.last_confirmed_at_text
        return None if self.last_confirmed_at is None else format_instant(self.last_confirmed_at)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckinResponse:
    target: EvaluatedTarget | None = None
    rollback: RollbackSignal | None = None
    next_checkin_secs: int = NEXT_CHECKIN_SECS
    absent: frozenset[str] = _absent_field()


# --- confirm, report -----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfirmRequest:
    hostname: str
    rollout: str
    """The rolloutId (the target's channelRef)."""
    wave: int
    generation: GenerationRef


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportRequest:
    hostname: str
    agent_version: str
    occurred_at: datetime
    rollout: str | None
    event: str
    """A kebab-case kind; see REPORT_EVENTS."""
    details: Mapping[str, Any]
    """snake_case keys, kept as received."""
    signature: str | None = None
    absent: frozenset[str] = _absent_field()
    texts: Mapping[str, str] = _texts_field()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportAccepted:
    event_id: str


# --- enrollment ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EnrollRequest:
    token: Mapping[str, Any]
    """The bootstrap token as received (see `token.py`)."""
    csr_pem: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RenewRequest:
    csr_pem: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CertIssued:
    """The reply to enroll and to renew."""

    cert_pem: str
    not_after: datetime
    texts: Mapping[str, str] = _texts_field()


EnrollResponse = CertIssued
RenewResponse = CertIssued


@dataclass(frozen=True, slots=True, kw_only=True)
class BootstrapEvent:
    event: str
    details: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class BootstrapEventRequest:
    token: Mapping[str, Any]
    agent_version: str
    occurred_at: datetime
    event: BootstrapEvent
    texts: Mapping[str, str] = _texts_field()


# --- /v1/hosts -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HostStatusEntry:
    """One `/v1/hosts` row; every key is always emitted (null when unknown)."""

    hostname: str
    channel: str | None = None
    declared_closure_hash: ClosureHash | None = None
    current_closure_hash: ClosureHash | None = None
    pending_closure_hash: ClosureHash | None = None
    last_checkin_at: datetime | None = None
    last_rollout_id: str | None = None
    converged: bool = False
    outstanding_compliance_failures: int = 0
    outstanding_runtime_gate_errors: int = 0
    verified_event_count: int = 0
    last_uptime_secs: int | None = None
    rollout_state: str | None = None
    pending_reboot: bool = False
    quarantined_closure: ClosureHash | None = None
    pin: Pin | None = None
    outstanding_health_failures: int = 0
    clock_skew_secs: int | None = None
    """The host's clock minus the CP's at its last checkin (its `sentAt`), if it sent one."""
    texts: Mapping[str, str] = _texts_field()


# --- parsing -------------------------------------------------------------------


def _read(r: Reader, key: str, grammar: Grammar) -> str:
    """A required string that must match `grammar` (identifiers are checked here, once)."""
    return grammar.check(r.str(key), source=r.source, field=r.field(key))


def _opt_read(r: Reader, key: str, grammar: Grammar) -> str | None:
    value = r.opt_str(key)
    return None if value is None else grammar.check(value, source=r.source, field=r.field(key))


def _closure(r: Reader, key: str) -> ClosureHash:
    return ClosureHash(_read(r, key, CLOSURE_HASH))


def _read_generation(r: Reader) -> GenerationRef:
    return GenerationRef(
        closure_hash=_closure(r, "closureHash"),
        boot_id=_read(r, "bootId", TOKEN),
        channel_ref=_opt_read(r, "channelRef", TOKEN),
        absent=absent_keys(r, "channelRef"),
    )


def _read_fetch_outcome(r: Reader) -> FetchOutcome:
    return FetchOutcome(
        result=r.one_of("result", FETCH_RESULTS),
        error=_opt_read(r, "error", TEXT),
        rollout_id=_opt_read(r, "rolloutId", ROLLOUT_ID),
        absent=absent_keys(r, "error", "rolloutId"),
    )


def _read_probe(r: Reader) -> HealthProbe:
    texts: dict[str, str] = {}
    return HealthProbe(
        name=_read(r, "name", TEXT),
        kind=r.one_of("kind", PROBE_KINDS),
        status=r.one_of("status", PROBE_STATUSES),
        last_run_at=read_opt_instant(r, "lastRunAt", texts),
        last_pass_at=read_opt_instant(r, "lastPassAt", texts),
        failure_reason=_opt_read(r, "failureReason", TEXT),
        absent=absent_keys(r, "lastRunAt", "lastPassAt", "failureReason"),
        texts=texts,
    )


def _read_target(r: Reader) -> EvaluatedTarget:
    texts: dict[str, str] = {}
    activate_r = r.opt_sub("activate")
    activate = None
    if activate_r is not None:
        activate = Activate(
            confirm_window_secs=activate_r.int("confirmWindowSecs"),
            confirm_endpoint=_read(activate_r, "confirmEndpoint", TOKEN),
        )
    signed_at_text = r.str("signedAt")
    return EvaluatedTarget(
        closure_hash=_closure(r, "closureHash"),
        channel_ref=_read(r, "channelRef", TOKEN),
        evaluated_at=read_instant(r, "evaluatedAt", texts),
        rollout_id=_read(r, "rolloutId", ROLLOUT_ID),
        signed_at=parse_instant(signed_at_text, source=r.source, field=r.field("signedAt")),
        signed_at_text=signed_at_text,
        freshness_window_secs=r.int("freshnessWindowSecs"),
        wave_index=r.opt_int("waveIndex"),
        activate=activate,
        compliance_mode=_opt_read(r, "complianceMode", TOKEN),
        absent=absent_keys(r, "waveIndex", "activate", "complianceMode"),
        texts=texts,
    )


def parse_generation_ref(value: Any, *, source: str = "generation") -> GenerationRef:
    return _read_generation(Reader.root(value, source))


def parse_health_probe(value: Any, *, source: str = "health probe") -> HealthProbe:
    return _read_probe(Reader.root(value, source))


def parse_evaluated_target(value: Any, *, source: str = "target") -> EvaluatedTarget:
    return _read_target(Reader.root(value, source))


def parse_checkin_request(value: Any, *, source: str = "checkin body") -> CheckinRequest:
    r = Reader.root(value, source)
    texts: dict[str, str] = {}
    pending_r = r.opt_sub("pendingGeneration")
    target_r = r.opt_sub("lastEvaluatedTarget")
    fetch_r = r.opt_sub("lastFetchOutcome")
    confirmed_text = r.opt_str("lastConfirmedAt")
    confirmed_at = None
    if confirmed_text is not None:
        confirmed_at = parse_instant(
            confirmed_text, source=source, field=r.field("lastConfirmedAt")
        )
    return CheckinRequest(
        hostname=_read(r, "hostname", HOSTNAME),
        agent_version=_read(r, "agentVersion", TOKEN),
        current_generation=_read_generation(r.sub("currentGeneration")),
        pending_generation=(
            None
            if pending_r is None
            else PendingGeneration(closure_hash=_closure(pending_r, "closureHash"))
        ),
        last_evaluated_target=None if target_r is None else _read_target(target_r),
        last_fetch_outcome=None if fetch_r is None else _read_fetch_outcome(fetch_r),
        uptime_secs=r.opt_int("uptimeSecs"),
        last_confirmed_at=confirmed_at,
        last_confirmed_at_text=confirmed_text,
        attestation_signature=_opt_read(r, "attestationSignature", TOKEN),
        health_probes=tuple(_read_probe(p) for p in r.list_of("healthProbes", optional=True)),
        health_check_mode=_opt_one_of(r, "healthCheckMode", HEALTH_CHECK_MODES),
        sent_at=read_opt_instant(r, "sentAt", texts),
        absent=absent_keys(
            r,
            "pendingGeneration",
            "lastEvaluatedTarget",
            "lastFetchOutcome",
            "uptimeSecs",
            "lastConfirmedAt",
            "attestationSignature",
            "healthProbes",
            "healthCheckMode",
            "sentAt",
        ),
        texts=texts,
    )


def parse_checkin_response(value: Any, *, source: str = "checkin response") -> CheckinResponse:
    r = Reader.root(value, source)
    target_r = r.opt_sub("target")
    rollback_r = r.opt_sub("rollback")
    rollback = None
    if rollback_r is not None:
        rollback = RollbackSignal(
            rollout=_read(rollback_r, "rollout", TOKEN),
            target_ref=_read(rollback_r, "targetRef", TOKEN),
            reason=_read(rollback_r, "reason", TEXT),
        )
    return CheckinResponse(
        target=None if target_r is None else _read_target(target_r),
        rollback=rollback,
        next_checkin_secs=r.int("nextCheckinSecs"),
        absent=absent_keys(r, "target", "rollback"),
    )


def parse_confirm_request(value: Any, *, source: str = "confirm body") -> ConfirmRequest:
    r = Reader.root(value, source)
    return ConfirmRequest(
        hostname=_read(r, "hostname", HOSTNAME),
        rollout=_read(r, "rollout", ROLLOUT_ID),
        wave=r.int("wave"),
        generation=_read_generation(r.sub("generation")),
    )


def parse_report_request(value: Any, *, source: str = "report body") -> ReportRequest:
    r = Reader.root(value, source)
    texts: dict[str, str] = {}
    return ReportRequest(
        hostname=_read(r, "hostname", HOSTNAME),
        agent_version=_read(r, "agentVersion", TOKEN),
        occurred_at=read_instant(r, "occurredAt", texts),
        rollout=_opt_read(r, "rollout", TOKEN),
        event=_event_spec(_read(r, "event", TOKEN), source).event,
        details=_bounded_details(r),
        signature=_opt_read(r, "signature", TOKEN),
        absent=absent_keys(r, "rollout", "signature"),
        texts=texts,
    )


MAX_REPORT_DETAILS_BYTES = 16_384
"""A report's `details` as canonical JSON, at most: enough for every catalogued event
(stderr tails and evidence snippets are cut shorter by their producers)."""


def _bounded_details(r: Reader) -> dict[str, Any]:
    details = dict(r.sub("details").obj)
    size = len(canonical_bytes(details, source=r.source))
    if size > MAX_REPORT_DETAILS_BYTES:
        raise r.fail("details", f"{size} bytes, more than {MAX_REPORT_DETAILS_BYTES}")
    return details


def parse_report_accepted(value: Any, *, source: str = "report response") -> ReportAccepted:
    return ReportAccepted(event_id=Reader.root(value, source).str("eventId"))


def parse_enroll_request(value: Any, *, source: str = "enroll body") -> EnrollRequest:
    r = Reader.root(value, source)
    return EnrollRequest(token=dict(r.sub("token").obj), csr_pem=r.str("csrPem"))


def parse_renew_request(value: Any, *, source: str = "renew body") -> RenewRequest:
    return RenewRequest(csr_pem=Reader.root(value, source).str("csrPem"))


def parse_cert_issued(value: Any, *, source: str = "certificate response") -> CertIssued:
    r = Reader.root(value, source)
    texts: dict[str, str] = {}
    return CertIssued(
        cert_pem=r.str("certPem"), not_after=read_instant(r, "notAfter", texts), texts=texts
    )


def parse_enroll_response(value: Any, *, source: str = "enroll response") -> EnrollResponse:
    return parse_cert_issued(value, source=source)


def parse_renew_response(value: Any, *, source: str = "renew response") -> RenewResponse:
    return parse_cert_issued(value, source=source)


def parse_bootstrap_event_request(
    value: Any, *, source: str = "bootstrap-report body"
) -> BootstrapEventRequest:
    r = Reader.root(value, source)
    texts: dict[str, str] = {}
    event_r = r.sub("event")
    return BootstrapEventRequest(
        token=dict(r.sub("token").obj),
        agent_version=_read(r, "agentVersion", TOKEN),
        occurred_at=read_instant(r, "occurredAt", texts),
        event=BootstrapEvent(
            event=_read(event_r, "event", TOKEN), details=dict(event_r.sub("details").obj)
        ),
        texts=texts,
    )


def _read_pin(r: Reader) -> Pin:
    return Pin(
        commit=r.str("commit"),
        reason=r.str("reason"),
        expires_at=r.opt_str("expiresAt"),
        absent=absent_keys(r, "expiresAt"),
    )


def parse_host_status_entry(value: Any, *, source: str = "host status") -> HostStatusEntry:
    r = Reader.root(value, source)
    texts: dict[str, str] = {}
    r.raw("lastCheckinAt")
    r.raw("pin")
    pin_r = r.opt_sub("pin")
    declared = _nullable_str(r, "declaredClosureHash", CLOSURE_HASH)
    current = _nullable_str(r, "currentClosureHash", CLOSURE_HASH)
    pending = _nullable_str(r, "pendingClosureHash", CLOSURE_HASH)
    quarantined = _nullable_str(r, "quarantinedClosure", CLOSURE_HASH)
    return HostStatusEntry(
        hostname=_read(r, "hostname", HOSTNAME),
        channel=_nullable_str(r, "channel", TOKEN),
        declared_closure_hash=None if declared is None else ClosureHash(declared),
        current_closure_hash=None if current is None else ClosureHash(current),
        pending_closure_hash=None if pending is None else ClosureHash(pending),
        last_checkin_at=read_opt_instant(r, "lastCheckinAt", texts),
        last_rollout_id=_nullable_str(r, "lastRolloutId", ROLLOUT_ID),
        converged=r.bool("converged"),
        outstanding_compliance_failures=r.int("outstandingComplianceFailures"),
        outstanding_runtime_gate_errors=r.int("outstandingRuntimeGateErrors"),
        verified_event_count=r.int("verifiedEventCount"),
        last_uptime_secs=_nullable_int(r, "lastUptimeSecs"),
        rollout_state=_nullable_str(r, "rolloutState", TOKEN),
        pending_reboot=r.bool("pendingReboot"),
        quarantined_closure=None if quarantined is None else ClosureHash(quarantined),
        pin=None if pin_r is None else _read_pin(pin_r),
        outstanding_health_failures=r.int("outstandingHealthFailures"),
        clock_skew_secs=r.opt_int("clockSkewSecs"),  # absent from older CPs
        texts=texts,
    )


# --- emitting ------------------------------------------------------------------


def dump_generation_ref(g: GenerationRef) -> dict[str, Any]:
    out: dict[str, Any] = {"closureHash": g.closure_hash, "bootId": g.boot_id}
    put_optional(out, "channelRef", g.channel_ref, g.absent)
    return out


def dump_health_probe(p: HealthProbe) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p.name, "kind": p.kind, "status": p.status}
    put_instant(out, "lastRunAt", p.last_run_at, p.texts, p.absent)
    put_instant(out, "lastPassAt", p.last_pass_at, p.texts, p.absent)
    put_optional(out, "failureReason", p.failure_reason, p.absent)
    return out


def dump_evaluated_target(t: EvaluatedTarget) -> dict[str, Any]:
    out: dict[str, Any] = {
        "closureHash": t.closure_hash,
        "channelRef": t.channel_ref,
        "evaluatedAt": instant_text("evaluatedAt", t.evaluated_at, t.texts),
        "rolloutId": t.rollout_id,
        "signedAt": t.signed_at_wire,
        "freshnessWindowSecs": t.freshness_window_secs,
    }
    put_optional(out, "waveIndex", t.wave_index, t.absent)
    activate = None
    if t.activate is not None:
        activate = {
            "confirmWindowSecs": t.activate.confirm_window_secs,
            "confirmEndpoint": t.activate.confirm_endpoint,
        }
    put_optional(out, "activate", activate, t.absent)
    put_optional(out, "complianceMode", t.compliance_mode, t.absent)
    return out


def _dump_fetch_outcome(f: FetchOutcome) -> dict[str, Any]:
    out: dict[str, Any] = {"result": f.result}
    put_optional(out, "error", f.error, f.absent)
    put_optional(out, "rolloutId", f.rollout_id, f.absent)
    return out


def dump_checkin_request(c: CheckinRequest) -> dict[str, Any]:
    out: dict[str, Any] = {
        "hostname": c.hostname,
        "agentVersion": c.agent_version,
        "currentGeneration": dump_generation_ref(c.current_generation),
    }
    pending = c.pending_generation
    put_optional(
        out,
        "pendingGeneration",
        None if pending is None else {"closureHash": pending.closure_hash},
        c.absent,
    )
    target = c.last_evaluated_target
    put_optional(
        out,
        "lastEvaluatedTarget",
        None if target is None else dump_evaluated_target(target),
        c.absent,
    )
    fetch = c.last_fetch_outcome
    put_optional(
        out, "lastFetchOutcome", None if fetch is None else _dump_fetch_outcome(fetch), c.absent
    )
    put_optional(out, "uptimeSecs", c.uptime_secs, c.absent)
    put_optional(out, "lastConfirmedAt", c.last_confirmed_at_wire, c.absent)
    put_optional(out, "attestationSignature", c.attestation_signature, c.absent)
    put_optional(out, "healthProbes", [dump_health_probe(p) for p in c.health_probes], c.absent)
    put_optional(out, "healthCheckMode", c.health_check_mode, c.absent)
    put_instant(out, "sentAt", c.sent_at, c.texts, c.absent)
    return out


def dump_checkin_response(c: CheckinResponse) -> dict[str, Any]:
    out: dict[str, Any] = {"nextCheckinSecs": c.next_checkin_secs}
    put_optional(
        out, "target", None if c.target is None else dump_evaluated_target(c.target), c.absent
    )
    rollback = None
    if c.rollback is not None:
        rollback = {
            "rollout": c.rollback.rollout,
            "targetRef": c.rollback.target_ref,
            "reason": c.rollback.reason,
        }
    put_optional(out, "rollback", rollback, c.absent)
    return out


def dump_confirm_request(c: ConfirmRequest) -> dict[str, Any]:
    return {
        "hostname": c.hostname,
        "rollout": c.rollout,
        "wave": c.wave,
        "generation": dump_generation_ref(c.generation),
    }


def dump_report_request(rep: ReportRequest) -> dict[str, Any]:
    out: dict[str, Any] = {
        "hostname": rep.hostname,
        "agentVersion": rep.agent_version,
        "occurredAt": instant_text("occurredAt", rep.occurred_at, rep.texts),
        "event": rep.event,
        "details": dict(rep.details),
    }
    put_optional(out, "rollout", rep.rollout, rep.absent)
    put_optional(out, "signature", rep.signature, rep.absent)
    return out


def dump_report_accepted(a: ReportAccepted) -> dict[str, Any]:
    return {"eventId": a.event_id}


def dump_enroll_request(e: EnrollRequest) -> dict[str, Any]:
    return {"token": dict(e.token), "csrPem": e.csr_pem}


def dump_renew_request(r: RenewRequest) -> dict[str, Any]:
    return {"csrPem": r.csr_pem}


def dump_cert_issued(c: CertIssued) -> dict[str, Any]:
    return {"certPem": c.cert_pem, "notAfter": instant_text("notAfter", c.not_after, c.texts)}


def dump_enroll_response(c: EnrollResponse) -> dict[str, Any]:
    return dump_cert_issued(c)


def dump_renew_response(c: RenewResponse) -> dict[str, Any]:
    return dump_cert_issued(c)


def dump_bootstrap_event_request(b: BootstrapEventRequest) -> dict[str, Any]:
    return {
        "token": dict(b.token),
        "agentVersion": b.agent_version,
        "occurredAt": instant_text("occurredAt", b.occurred_at, b.texts),
        "event": {"event": b.event.event, "details": dict(b.event.details)},
    }


def _dump_pin(p: Pin) -> dict[str, Any]:
    out: dict[str, Any] = {"commit": p.commit, "reason": p.reason}
    put_optional(out, "expiresAt", p.expires_at, p.absent)
    return out


def dump_host_status_entry(h: HostStatusEntry) -> dict[str, Any]:
    return {
        "hostname": h.hostname,
        "channel": h.channel,
        "declaredClosureHash": h.declared_closure_hash,
        "currentClosureHash": h.current_closure_hash,
        "pendingClosureHash": h.pending_closure_hash,
        "lastCheckinAt": (
            None
            if h.last_checkin_at is None
            else instant_text("lastCheckinAt", h.last_checkin_at, h.texts)
        ),
        "lastRolloutId": h.last_rollout_id,
        "converged": h.converged,
        "outstandingComplianceFailures": h.outstanding_compliance_failures,
        "outstandingRuntimeGateErrors": h.outstanding_runtime_gate_errors,
        "verifiedEventCount": h.verified_event_count,
        "lastUptimeSecs": h.last_uptime_secs,
        "rolloutState": h.rollout_state,
        "pendingReboot": h.pending_reboot,
        "quarantinedClosure": h.quarantined_closure,
        "pin": None if h.pin is None else _dump_pin(h.pin),
        "outstandingHealthFailures": h.outstanding_health_failures,
        "clockSkewSecs": h.clock_skew_secs,
    }


# --- report event catalogue (protocol §2.7) -----------------------------------

ACTIVATION_STARTED = "activation-started"
ACTIVATION_DEFERRED = "activation-deferred"
CLOSURE_QUARANTINED = "closure-quarantined"
ACTIVATION_FAILED = "activation-failed"
REALISE_FAILED = "realise-failed"
VERIFY_MISMATCH = "verify-mismatch"
ROLLBACK_TRIGGERED = "rollback-triggered"
ENROLLMENT_FAILED = "enrollment-failed"
RENEWAL_FAILED = "renewal-failed"
TRUST_ERROR = "trust-error"
CLOSURE_SIGNATURE_MISMATCH = "closure-signature-mismatch"
STALE_TARGET = "stale-target"
COMPLIANCE_FAILURE = "compliance-failure"
MANIFEST_MISSING = "manifest-missing"
MANIFEST_VERIFY_FAILED = "manifest-verify-failed"
MANIFEST_MISMATCH = "manifest-mismatch"
RUNTIME_GATE_ERROR = "runtime-gate-error"
OTHER = "other"

BOOTSTRAP_EVENTS = (TRUST_ERROR, ENROLLMENT_FAILED)
"""The only events `/v1/agent/bootstrap-report` accepts (else 422)."""

SIGNATURE_VERIFIED = "verified"
SIGNATURE_UNSIGNED = "unsigned"
SIGNATURE_NO_PUBKEY = "no-pubkey"
SIGNATURE_MISMATCH = "mismatch"
SIGNATURE_MALFORMED = "malformed"
SIGNATURE_WRONG_ALGORITHM = "wrong-algorithm"
SIGNATURE_STATUSES = (
    SIGNATURE_VERIFIED,
    SIGNATURE_UNSIGNED,
    SIGNATURE_NO_PUBKEY,
    SIGNATURE_MISMATCH,
    SIGNATURE_MALFORMED,
    SIGNATURE_WRONG_ALGORITHM,
)
SIGNATURE_STATUSES_EXCLUDED_FROM_GATES = (SIGNATURE_MISMATCH, SIGNATURE_MALFORMED)

STDERR_TAIL = "stderr_tail"
EVIDENCE_SNIPPET = "evidence_snippet"
_INT_DETAILS = frozenset(
    {"exit_code", "failure_count", "freshness_window_secs", "age_secs", "collector_exit_code"}
)
_STR_LIST_DETAILS = frozenset({"framework_articles"})


@dataclass(frozen=True, slots=True, kw_only=True)
class EventSpec:
    """One row of the §2.7 catalogue: the `details` keys and whether it is signed."""

    event: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    signed: bool = False

    @property
    def fields(self) -> tuple[str, ...]:
        return self.required + self.optional


def _spec(event: str, *required: str, optional: tuple[str, ...] = (), signed: bool) -> EventSpec:
    return EventSpec(event=event, required=required, optional=optional, signed=signed)


REPORT_EVENTS: Mapping[str, EventSpec] = {
    s.event: s
    for s in (
        _spec(ACTIVATION_STARTED, "closure_hash", "channel_ref", signed=False),
        _spec(ACTIVATION_DEFERRED, "closure_hash", "channel_ref", "component", signed=False),
        _spec(
            CLOSURE_QUARANTINED,
            "closure_hash",
            "channel_ref",
            "failure_count",
            "reason",
            signed=False,
        ),
        _spec(ACTIVATION_FAILED, "phase", optional=("exit_code", STDERR_TAIL), signed=True),
        _spec(REALISE_FAILED, "closure_hash", "reason", signed=True),
        _spec(VERIFY_MISMATCH, "expected", "actual", signed=True),
        _spec(ROLLBACK_TRIGGERED, "reason", signed=True),
        _spec(ENROLLMENT_FAILED, "reason", signed=False),
        _spec(RENEWAL_FAILED, "reason", signed=False),
        _spec(TRUST_ERROR, "reason", signed=False),
        _spec(CLOSURE_SIGNATURE_MISMATCH, "closure_hash", STDERR_TAIL, signed=True),
        _spec(
            STALE_TARGET,
            "closure_hash",
            "channel_ref",
            "signed_at",
            "freshness_window_secs",
            "age_secs",
            signed=True,
        ),
        _spec(
            COMPLIANCE_FAILURE,
            "control_id",
            "status",
            "framework_articles",
            "evidence_collected_at",
            optional=(EVIDENCE_SNIPPET,),
            signed=True,
        ),
        _spec(MANIFEST_MISSING, "rollout_id", "reason", signed=True),
        _spec(MANIFEST_VERIFY_FAILED, "rollout_id", "reason", signed=True),
        _spec(MANIFEST_MISMATCH, "rollout_id", "reason", signed=True),
        _spec(
            RUNTIME_GATE_ERROR,
            "reason",
            "activation_completed_at",
            optional=("collector_exit_code", "evidence_collected_at"),
            signed=True,
        ),
        _spec(OTHER, "kind", optional=("detail",), signed=False),
    )
}


def is_signed_event(event: str) -> bool:
    spec = REPORT_EVENTS.get(event)
    return spec is not None and spec.signed


def _event_spec(event: str, source: str) -> EventSpec:
    spec = REPORT_EVENTS.get(event)
    if spec is None:
        raise ParseError(source, "event", f"unknown report event {event!r}")
    return spec


def check_details(event: str, details: Mapping[str, Any], *, source: str = "report") -> None:
    """Check `details` against the catalogue: required keys present, values typed.

    Receivers store reports as sent; this is for producers and for tests.
    """
    spec = _event_spec(event, source)
    for key in spec.fields:
        where = f"details.{key}"
        if key not in details or details[key] is None:
            if key in spec.required:
                raise ParseError(source, where, "missing")
            continue
        value = details[key]
        if key in _INT_DETAILS:
            ok = isinstance(value, int) and not isinstance(value, bool)
            what = "an integer"
        elif key in _STR_LIST_DETAILS:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            what = "an array of strings"
        else:
            ok = isinstance(value, str)
            what = "a string"
        if not ok:
            raise ParseError(source, where, f"expected {what}, got {value!r}")


def snake_to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def text_sha256(text: str) -> str:
    """Hex sha256 of the JCS form of a string (the quoted JSON string)."""
    return sha256_hex(canonical_bytes(text))


def evidence_payload(
    *, hostname: str, rollout: str | None, event: str, details: Mapping[str, Any]
) -> bytes:
    """JCS bytes the host key signs for a report (protocol §2.7).

    `hostname`, `rollout`, then the event's catalogued detail fields in camelCase,
    absent ones as null; `stderr_tail` becomes `stderrTailSha256` (absent hashes "")
    and `evidence_snippet` becomes `evidenceSnippetSha256` (absent gives "").
    Keys not in the catalogue are not covered. Unknown events raise ParseError.
    """
    spec = _event_spec(event, "report")
    payload: dict[str, Any] = {"hostname": hostname, "rollout": rollout}
    for key in spec.fields:
        value = details.get(key)
        if key == STDERR_TAIL:
            payload["stderrTailSha256"] = text_sha256(value if value is not None else "")
        elif key == EVIDENCE_SNIPPET:
            payload["evidenceSnippetSha256"] = "" if value is None else text_sha256(value)
        else:
            payload[snake_to_camel(key)] = value
    return canonical_bytes(payload, source="evidence payload")


def report_evidence_payload(report: ReportRequest) -> bytes:
    return evidence_payload(
        hostname=report.hostname,
        rollout=report.rollout,
        event=report.event,
        details=report.details,
    )


def attestation_payload(*, hostname: str, rollout_id: str, last_confirmed_at: str) -> bytes:
    """JCS bytes of `{hostname, rolloutId, lastConfirmedAt}`; pass the attested text as is."""
    return canonical_bytes(
        {"hostname": hostname, "rolloutId": rollout_id, "lastConfirmedAt": last_confirmed_at},
        source="attestation payload",
    )
