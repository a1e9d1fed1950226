"""The agent's host reducer and session (lifecycle §2.3, §5; decisions.md watchdog)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixfleet.core import wire
from nixfleet.core.agent import (
    CP_410_PREFIX,
    CP_410_REASON,
    CP_SIGNAL_PREFIX,
    TRANSITIONS,
    VERIFY_MISMATCH_PHASE,
    WATCHDOG_PREFIX,
    WATCHDOG_REASON,
    Activate,
    AgentAction,
    AgentEvent,
    AgentSession,
    AgentState,
    Boot,
    Checkin,
    CheckinFailed,
    CheckinOk,
    ConfirmAnswered,
    ConfirmFailed,
    DeferredPendingReboot,
    FetchClosure,
    FetchDone,
    FetchFailed,
    FetchManifest,
    FiredAndPolled,
    LastConfirmed,
    LastDeferred,
    LastDispatched,
    LastFailedClosure,
    ManifestFailed,
    ManifestOk,
    PendingTarget,
    PersistedState,
    PersistState,
    Phase,
    PollTick,
    RealiseFailed,
    Report,
    ReportFailed,
    ReportSent,
    Rollback,
    RollbackDone,
    RollbackPlan,
    SendConfirm,
    SignatureMismatch,
    Sleep,
    SpawnFailed,
    StatePersisted,
    SwitchFailed,
    VerifyMismatch,
    checkin_backoff,
    confirm_retry_delay,
    step,
)
from nixfleet.core.closure import ClosureHash, closure_hash_from_path
from nixfleet.core.errors import BadInput, IllegalTransition, NixfleetError
from nixfleet.core.timeutil import format_instant

NOW = datetime(2026, 4, 24, 10, 0, tzinfo=UTC)
US = timedelta(microseconds=1)
SEC = timedelta(seconds=1)
WINDOW = timedelta(seconds=360)
HOUR = timedelta(hours=1)

OLD = ClosureHash("1" * 32 + "-nixos-system-h1-26.04")
NEW = ClosureHash("0" * 32 + "-nixos-system-h1-26.05")
NEW_RC = ClosureHash("0" * 32 + "-nixos-system-h1-26.05rc")
"""Same 32-char store hash as NEW, different name: NOT the same closure."""
OTHER = ClosureHash("2" * 32 + "-nixos-system-h1-26.06")
RID = "a" * 64
RID2 = "b" * 64
HOST = "h1"
VERSION = "0.1.0"
BOOT_ID = "boot-1"


def target(
    closure: ClosureHash = NEW,
    *,
    rid: str = RID,
    signed_at: datetime = NOW - HOUR,
    window_secs: int = 86_400,
    activate: wire.Activate | None = wire.Activate(),  # noqa: B008 - frozen record
    wave: int | None = 0,
) -> wire.EvaluatedTarget:
    return wire.EvaluatedTarget(
        closure_hash=closure,
        channel_ref=rid,
        evaluated_at=signed_at,
        rollout_id=rid,
        signed_at=signed_at,
        signed_at_text=format_instant(signed_at),
        freshness_window_secs=window_secs,
        wave_index=wave,
        activate=activate,
    )


T = target()
T2 = target(OTHER, rid=RID2)
D = LastDispatched(target=T, dispatched_at=NOW, confirm_deadline=NOW + WINDOW)
DEADLINE = NOW + WINDOW


def booted(**changes: Any) -> AgentState:
    base = AgentState(
        hostname=HOST,
        agent_version=VERSION,
        phase=Phase.IDLE,
        boot_id=BOOT_ID,
        current=OLD,
    )
    return replace(base, **changes)


def persisted(**changes: Any) -> PersistedState:
    return PersistedState(**changes)


def report(event: str, rollout: str | None, at: datetime, **details: Any) -> Report:
    return Report(event=event, rollout=rollout, details=details, occurred_at=at)


def confirm(closure: ClosureHash = NEW, rid: str = RID) -> SendConfirm:
    return SendConfirm(
        request=wire.ConfirmRequest(
            hostname=HOST,
            rollout=rid,
            wave=0,
            generation=wire.GenerationRef(closure_hash=closure, channel_ref=rid, boot_id=BOOT_ID),
        ),
        endpoint="/v1/agent/confirm",
    )


def checkin_req(current: ClosureHash = OLD, **changes: Any) -> wire.CheckinRequest:
    base = wire.CheckinRequest(
        hostname=HOST,
        agent_version=VERSION,
        current_generation=wire.GenerationRef(closure_hash=current, boot_id=BOOT_ID),
        sent_at=NOW,
    )
    return replace(base, **changes)


def response(
    tgt: wire.EvaluatedTarget | None = None, rollback: wire.RollbackSignal | None = None
) -> CheckinOk:
    return CheckinOk(response=wire.CheckinResponse(target=tgt, rollback=rollback))


SIGNAL = wire.RollbackSignal(
    rollout=RID, target_ref=RID, reason="policy: rollback-and-halt; host h1 is Failed"
)

# States along the happy path.
CHECKING_IN = booted(phase=Phase.CHECKING_IN)
MANIFEST = booted(phase=Phase.FETCHING_MANIFEST, target=PendingTarget(target=T, received_at=NOW))
FETCHED_P = persisted(
    last_dispatched=D, last_fetch_outcome=wire.FetchOutcome(result="ok", rollout_id=RID)
)
FETCHING = replace(MANIFEST, phase=Phase.FETCHING, persisted=FETCHED_P)
ACTIVATING = replace(FETCHING, phase=Phase.ACTIVATING)
CONFIRMING = booted(
    phase=Phase.CONFIRMING,
    current=NEW,
    previous=OLD,
    persisted=FETCHED_P,
    confirm_deadline=DEADLINE,
)
WINDOW_STATE = replace(CONFIRMING, phase=Phase.CONFIRM_WINDOW)
CONFIRMED_P = persisted(
    last_confirmed_at=LastConfirmed(closure_hash=NEW, confirmed_at=NOW + 30 * SEC),
    last_target=T,
    last_fetch_outcome=wire.FetchOutcome(result="ok", rollout_id=RID),
)

SWITCH_PLAN = RollbackPlan(
    prefix="switch-poll-timeout",
    reason="activation-failed: switch-poll-timeout",
    rollout=RID,
    restores=OLD,
    failure_event=wire.ACTIVATION_FAILED,
    failure_details={"phase": "switch-poll-timeout", "exit_code": 3},
)
WATCHDOG_PLAN = RollbackPlan(
    prefix=WATCHDOG_PREFIX,
    reason=WATCHDOG_REASON,
    rollout=RID,
    restores=OLD,
    record_failure=False,
)
FAILED_NEW = LastFailedClosure(
    closure_hash=NEW,
    channel_ref=RID,
    failure_count=1,
    last_failure_at=NOW + 20 * SEC,
    reason="switch-poll-timeout",
)


@dataclass(frozen=True)
class Case:
    id: str
    state: AgentState
    event: AgentEvent
    now: datetime
    expected_state: AgentState
    expected_actions: list[AgentAction]


def _boot_cases() -> list[Case]:
    start = AgentState(hostname=HOST, agent_version=VERSION)
    recorded = replace(start, persisted=persisted(last_dispatched=D))
    deferred_p = persisted(
        last_dispatched=replace(D, confirm_deadline=None),
        last_deferred=LastDeferred(
            closure_hash=NEW, channel_ref=RID, component="kernel", deferred_at=NOW + 20 * SEC
        ),
    )
    later = NOW + timedelta(days=2)
    rearmed_p = replace(deferred_p, last_dispatched=replace(D, confirm_deadline=later + WINDOW))
    return [
        Case(
            "boot: nothing recorded => idle",
            start,
            Boot(current_closure=OLD, boot_id=BOOT_ID),
            NOW,
            booted(),
            [],
        ),
        Case(
            "boot: recorded dispatch == current => confirm",
            recorded,
            Boot(current_closure=NEW, boot_id=BOOT_ID),
            NOW + 10 * SEC,
            booted(
                phase=Phase.CONFIRMING,
                current=NEW,
                persisted=persisted(last_dispatched=D),
                confirm_deadline=DEADLINE,
            ),
            [confirm()],
        ),
        Case(
            "boot: recorded dispatch != current => cleared",
            recorded,
            Boot(current_closure=OLD, boot_id=BOOT_ID),
            NOW + 10 * SEC,
            booted(),
            [PersistState(state=PersistedState())],
        ),
        Case(
            "boot: recorded dispatch == current, deadline passed => watchdog rollback",
            recorded,
            Boot(current_closure=NEW, boot_id=BOOT_ID),
            DEADLINE,
            booted(
                phase=Phase.ROLLING_BACK,
                current=NEW,
                persisted=persisted(last_dispatched=D),
                rollback=replace(WATCHDOG_PLAN, restores=None),
            ),
            [Rollback(reason=WATCHDOG_REASON, rollout=RID)],
        ),
        Case(
            "boot: deferred activation not yet running => kept, idle",
            replace(start, persisted=deferred_p),
            Boot(current_closure=OLD, boot_id=BOOT_ID),
            later,
            booted(persisted=deferred_p),
            [],
        ),
        Case(
            "boot: deferred activation now running => watchdog armed from boot, confirm",
            replace(start, persisted=deferred_p),
            Boot(current_closure=NEW, boot_id=BOOT_ID),
            later,
            booted(
                phase=Phase.CONFIRMING,
                current=NEW,
                persisted=rearmed_p,
                confirm_deadline=later + WINDOW,
            ),
            [PersistState(state=rearmed_p), confirm()],
        ),
    ]


def _checkin_cases() -> list[Case]:
    stale = target(signed_at=NOW - 2 * HOUR, window_secs=3600)
    confirmed_new = booted(
        phase=Phase.CHECKING_IN, current=NEW, previous=OLD, persisted=CONFIRMED_P
    )
    reverted = replace(confirmed_new, current=OLD, previous=NEW)
    return [
        Case(
            "idle tick => checkin",
            booted(),
            PollTick(),
            NOW,
            CHECKING_IN,
            [Checkin(request=checkin_req())],
        ),
        Case(
            "idle tick, failed rollback left the record on the running system => retry",
            booted(current=NEW, previous=OLD, persisted=persisted(last_dispatched=D)),
            PollTick(),
            DEADLINE + 60 * SEC,
            booted(
                phase=Phase.ROLLING_BACK,
                current=NEW,
                previous=OLD,
                persisted=persisted(last_dispatched=D),
                rollback=WATCHDOG_PLAN,
                resume_checkin=True,
            ),
            [Rollback(reason=WATCHDOG_REASON, rollout=RID)],
        ),
        Case(
            "checkin failed => idle, failures + 1",
            replace(CHECKING_IN, checkin_failures=2),
            CheckinFailed(reason="unreachable"),
            NOW,
            booted(checkin_failures=3),
            [],
        ),
        Case(
            "checkin ok, no target => idle, failures reset",
            replace(CHECKING_IN, checkin_failures=2),
            response(),
            NOW,
            booted(),
            [],
        ),
        Case(
            "checkin ok, target == current full basename => converged no-op",
            replace(CHECKING_IN, current=NEW),
            response(T),
            NOW,
            booted(current=NEW),
            [],
        ),
        Case(
            "checkin ok, target differs only after the first '-' => not converged",
            replace(CHECKING_IN, current=NEW_RC),
            response(T),
            NOW,
            replace(MANIFEST, current=NEW_RC),
            [FetchManifest(rollout_id=RID, wave_index=0)],
        ),
        Case(
            "checkin ok, stale target => stale-target report, refused",
            CHECKING_IN,
            response(stale),
            NOW,
            booted(),
            [
                report(
                    wire.STALE_TARGET,
                    RID,
                    NOW,
                    closure_hash=NEW,
                    channel_ref=RID,
                    signed_at=format_instant(NOW - 2 * HOUR),
                    freshness_window_secs=3600,
                    age_secs=7200,
                )
            ],
        ),
        Case(
            "checkin ok, target exactly window + 60 s old => still fresh",
            CHECKING_IN,
            response(target(signed_at=NOW - timedelta(seconds=3660), window_secs=3600)),
            NOW,
            replace(
                MANIFEST,
                target=PendingTarget(
                    target=target(signed_at=NOW - timedelta(seconds=3660), window_secs=3600),
                    received_at=NOW,
                ),
            ),
            [FetchManifest(rollout_id=RID, wave_index=0)],
        ),
        Case(
            "checkin ok, fresh target => manifest",
            CHECKING_IN,
            response(T),
            NOW,
            MANIFEST,
            [FetchManifest(rollout_id=RID, wave_index=0)],
        ),
        Case(
            "checkin ok, rollback signal + target => rollback first, target held",
            confirmed_new,
            response(T2, SIGNAL),
            NOW,
            replace(
                confirmed_new,
                phase=Phase.ROLLING_BACK,
                rollback=RollbackPlan(
                    prefix=CP_SIGNAL_PREFIX,
                    reason=SIGNAL.reason,
                    rollout=RID,
                    restores=OLD,
                    then_target=PendingTarget(target=T2, received_at=NOW),
                ),
            ),
            [Rollback(reason=SIGNAL.reason, rollout=RID)],
        ),
        Case(
            "checkin ok, repeated rollback signal after reverting => report only (idempotent)",
            reverted,
            response(T2, SIGNAL),
            NOW,
            replace(
                reverted,
                phase=Phase.FETCHING_MANIFEST,
                target=PendingTarget(target=T2, received_at=NOW),
            ),
            [
                report(wire.ROLLBACK_TRIGGERED, RID, NOW, reason=SIGNAL.reason),
                FetchManifest(rollout_id=RID2, wave_index=0),
            ],
        ),
    ]


def _target_cases() -> list[Case]:
    ok_outcome = wire.FetchOutcome(result="ok", rollout_id=RID)
    deferred = LastDeferred(
        closure_hash=NEW, channel_ref=RID, component="dbus", deferred_at=NOW - HOUR
    )
    failed = replace(FAILED_NEW, last_failure_at=NOW - 3 * HOUR)
    at = NOW + SEC
    posted = replace(failed, last_quarantine_post_at=at)
    return [
        Case(
            "manifest ok => dispatch recorded, activation-started, fetch",
            MANIFEST,
            ManifestOk(),
            at,
            FETCHING,
            [
                PersistState(state=FETCHED_P),
                report(wire.ACTIVATION_STARTED, RID, at, closure_hash=NEW, channel_ref=RID),
                FetchClosure(closure_hash=NEW),
            ],
        ),
        Case(
            "manifest ok, closure waiting for a reboot => silent stop",
            replace(MANIFEST, persisted=persisted(last_deferred=deferred)),
            ManifestOk(),
            at,
            booted(persisted=persisted(last_deferred=deferred, last_fetch_outcome=ok_outcome)),
            [PersistState(state=persisted(last_deferred=deferred, last_fetch_outcome=ok_outcome))],
        ),
        Case(
            "manifest ok, closure failed <= 24 h ago => closure-quarantined, no activation",
            replace(MANIFEST, persisted=persisted(last_failed_closure=failed)),
            ManifestOk(),
            at,
            booted(persisted=persisted(last_failed_closure=posted, last_fetch_outcome=ok_outcome)),
            [
                PersistState(
                    state=persisted(last_failed_closure=posted, last_fetch_outcome=ok_outcome)
                ),
                report(
                    wire.CLOSURE_QUARANTINED,
                    RID,
                    at,
                    closure_hash=NEW,
                    channel_ref=RID,
                    failure_count=1,
                    reason="switch-poll-timeout",
                ),
            ],
        ),
        Case(
            "manifest ok, quarantined and reported < 1 h ago => no report, no activation",
            replace(
                MANIFEST,
                persisted=persisted(
                    last_failed_closure=replace(failed, last_quarantine_post_at=at - 59 * 60 * SEC)
                ),
            ),
            ManifestOk(),
            at,
            booted(
                persisted=persisted(
                    last_failed_closure=replace(failed, last_quarantine_post_at=at - 59 * 60 * SEC),
                    last_fetch_outcome=ok_outcome,
                )
            ),
            [
                PersistState(
                    state=persisted(
                        last_failed_closure=replace(
                            failed, last_quarantine_post_at=at - 59 * 60 * SEC
                        ),
                        last_fetch_outcome=ok_outcome,
                    )
                )
            ],
        ),
        Case(
            "manifest mismatch => verify-failed outcome, manifest-mismatch report",
            MANIFEST,
            ManifestFailed(kind="mismatch", reason="host not in hostSet"),
            at,
            booted(
                persisted=persisted(
                    last_fetch_outcome=wire.FetchOutcome(
                        result="verify-failed", rollout_id=RID, error="host not in hostSet"
                    )
                )
            ),
            [
                PersistState(
                    state=persisted(
                        last_fetch_outcome=wire.FetchOutcome(
                            result="verify-failed", rollout_id=RID, error="host not in hostSet"
                        )
                    )
                ),
                report(
                    wire.MANIFEST_MISMATCH, RID, at, rollout_id=RID, reason="host not in hostSet"
                ),
            ],
        ),
        Case(
            "manifest missing => fetch-failed outcome, manifest-missing report",
            MANIFEST,
            ManifestFailed(kind="missing", reason="404"),
            at,
            booted(
                persisted=persisted(
                    last_fetch_outcome=wire.FetchOutcome(
                        result="fetch-failed", rollout_id=RID, error="404"
                    )
                )
            ),
            [
                PersistState(
                    state=persisted(
                        last_fetch_outcome=wire.FetchOutcome(
                            result="fetch-failed", rollout_id=RID, error="404"
                        )
                    )
                ),
                report(wire.MANIFEST_MISSING, RID, at, rollout_id=RID, reason="404"),
            ],
        ),
        Case(
            "fetch done => activate",
            FETCHING,
            FetchDone(),
            at,
            ACTIVATING,
            [Activate(closure_hash=NEW)],
        ),
        Case(
            "fetch failed, signature => closure-signature-mismatch, record dropped",
            FETCHING,
            FetchFailed(reason="realise", signature_mismatch=True, stderr_tail="lacks a valid"),
            at,
            booted(persisted=persisted(last_fetch_outcome=ok_outcome)),
            [
                PersistState(state=persisted(last_fetch_outcome=ok_outcome)),
                report(
                    wire.CLOSURE_SIGNATURE_MISMATCH,
                    RID,
                    at,
                    closure_hash=NEW,
                    stderr_tail="lacks a valid",
                ),
            ],
        ),
        Case(
            "fetch failed => realise-failed, record dropped",
            FETCHING,
            FetchFailed(reason="cache unreachable"),
            at,
            booted(persisted=persisted(last_fetch_outcome=ok_outcome)),
            [
                PersistState(state=persisted(last_fetch_outcome=ok_outcome)),
                report(wire.REALISE_FAILED, RID, at, closure_hash=NEW, reason="cache unreachable"),
            ],
        ),
    ]


def _activation_cases() -> list[Case]:
    ok_outcome = wire.FetchOutcome(result="ok", rollout_id=RID)
    at = NOW + 20 * SEC
    failed_p = replace(FETCHED_P, last_failed_closure=FAILED_NEW)
    no_record_failed = persisted(
        last_fetch_outcome=ok_outcome,
        last_failed_closure=replace(FAILED_NEW, reason="nix-env-set"),
    )
    mismatch_failed = replace(
        FETCHED_P, last_failed_closure=replace(FAILED_NEW, reason=VERIFY_MISMATCH_PHASE)
    )
    deferred_p = replace(
        FETCHED_P,
        last_dispatched=replace(D, confirm_deadline=None),
        last_deferred=LastDeferred(
            closure_hash=NEW, channel_ref=RID, component="kernel", deferred_at=at
        ),
    )
    dropped = persisted(last_fetch_outcome=ok_outcome)
    return [
        Case(
            "fired and polled => confirm, watchdog armed",
            ACTIVATING,
            FiredAndPolled(),
            at,
            CONFIRMING,
            [confirm()],
        ),
        Case(
            "switch failed => failure counted, rollback (reports after it)",
            ACTIVATING,
            SwitchFailed(phase="switch-poll-timeout", exit_code=3),
            at,
            booted(phase=Phase.ROLLING_BACK, persisted=failed_p, rollback=SWITCH_PLAN),
            [
                PersistState(state=failed_p),
                Rollback(reason="activation-failed: switch-poll-timeout", rollout=RID),
            ],
        ),
        Case(
            "switch failed at nix-env-set => profile untouched, no rollback",
            ACTIVATING,
            SwitchFailed(phase="nix-env-set", exit_code=1),
            at,
            booted(persisted=no_record_failed),
            [
                PersistState(state=no_record_failed),
                report(wire.ACTIVATION_FAILED, RID, at, phase="nix-env-set", exit_code=1),
            ],
        ),
        Case(
            "verify mismatch => failure counted, rollback",
            ACTIVATING,
            VerifyMismatch(expected=NEW, actual=OTHER),
            at,
            booted(
                phase=Phase.ROLLING_BACK,
                current=OTHER,
                previous=OLD,
                persisted=mismatch_failed,
                rollback=RollbackPlan(
                    prefix=VERIFY_MISMATCH_PHASE,
                    reason=f"verify-mismatch: expected {NEW}, got {OTHER}",
                    rollout=RID,
                    restores=OLD,
                    failure_event=wire.VERIFY_MISMATCH,
                    failure_details={"expected": NEW, "actual": OTHER},
                ),
            ),
            [
                PersistState(state=mismatch_failed),
                Rollback(reason=f"verify-mismatch: expected {NEW}, got {OTHER}", rollout=RID),
            ],
        ),
        Case(
            "deferred pending reboot => last_deferred, record kept unarmed, report",
            ACTIVATING,
            DeferredPendingReboot(component="kernel"),
            at,
            booted(persisted=deferred_p),
            [
                PersistState(state=deferred_p),
                report(
                    wire.ACTIVATION_DEFERRED,
                    RID,
                    at,
                    closure_hash=NEW,
                    channel_ref=RID,
                    component="kernel",
                ),
            ],
        ),
        Case(
            "realise failed => report, no rollback",
            ACTIVATING,
            RealiseFailed(reason="switch lock held"),
            at,
            booted(persisted=dropped),
            [
                PersistState(state=dropped),
                report(wire.REALISE_FAILED, RID, at, closure_hash=NEW, reason="switch lock held"),
            ],
        ),
        Case(
            "signature mismatch => report, no rollback",
            ACTIVATING,
            SignatureMismatch(stderr_tail="no signature is trusted"),
            at,
            booted(persisted=dropped),
            [
                PersistState(state=dropped),
                report(
                    wire.CLOSURE_SIGNATURE_MISMATCH,
                    RID,
                    at,
                    closure_hash=NEW,
                    stderr_tail="no signature is trusted",
                ),
            ],
        ),
        Case(
            "spawn failed => other/activation-spawn-failed, no rollback",
            ACTIVATING,
            SpawnFailed(detail="ENOENT"),
            at,
            booted(persisted=dropped),
            [
                PersistState(state=dropped),
                report(wire.OTHER, RID, at, kind="activation-spawn-failed", detail="ENOENT"),
            ],
        ),
    ]


def _confirm_cases() -> list[Case]:
    at = NOW + 30 * SEC
    confirmed = booted(current=NEW, previous=OLD, persisted=CONFIRMED_P)
    cp410_plan = RollbackPlan(prefix=CP_410_PREFIX, reason=CP_410_REASON, rollout=RID, restores=OLD)
    return [
        Case(
            "confirm 204 => last_confirmed_at, last_target, record cleared",
            CONFIRMING,
            ConfirmAnswered(status=204),
            at,
            confirmed,
            [PersistState(state=CONFIRMED_P)],
        ),
        Case(
            "confirm 410 => local rollback",
            CONFIRMING,
            ConfirmAnswered(status=410),
            at,
            replace(
                CONFIRMING, phase=Phase.ROLLING_BACK, rollback=cp410_plan, confirm_deadline=None
            ),
            [Rollback(reason=CP_410_REASON, rollout=RID)],
        ),
        Case(
            "confirm 503 => wait for retry",
            CONFIRMING,
            ConfirmAnswered(status=503),
            at,
            WINDOW_STATE,
            [],
        ),
        Case(
            "confirm unreachable before the deadline => wait for retry",
            CONFIRMING,
            ConfirmFailed(reason="unreachable"),
            DEADLINE - US,
            WINDOW_STATE,
            [],
        ),
        Case(
            "confirm unreachable at the deadline => watchdog rollback",
            CONFIRMING,
            ConfirmFailed(reason="unreachable"),
            DEADLINE,
            replace(
                CONFIRMING, phase=Phase.ROLLING_BACK, rollback=WATCHDOG_PLAN, confirm_deadline=None
            ),
            [Rollback(reason=WATCHDOG_REASON, rollout=RID)],
        ),
        Case(
            "confirm 204 after the deadline => accepted (the CP confirmed)",
            CONFIRMING,
            ConfirmAnswered(status=204),
            DEADLINE + SEC,
            replace(
                confirmed,
                persisted=replace(
                    CONFIRMED_P,
                    last_confirmed_at=LastConfirmed(closure_hash=NEW, confirmed_at=DEADLINE + SEC),
                ),
            ),
            [
                PersistState(
                    state=replace(
                        CONFIRMED_P,
                        last_confirmed_at=LastConfirmed(
                            closure_hash=NEW, confirmed_at=DEADLINE + SEC
                        ),
                    )
                )
            ],
        ),
        Case(
            "watchdog: retry tick 1 µs before the deadline => confirm, no rollback",
            WINDOW_STATE,
            PollTick(),
            DEADLINE - US,
            CONFIRMING,
            [confirm()],
        ),
        Case(
            "watchdog: tick exactly at the deadline => rollback",
            WINDOW_STATE,
            PollTick(),
            DEADLINE,
            replace(
                CONFIRMING, phase=Phase.ROLLING_BACK, rollback=WATCHDOG_PLAN, confirm_deadline=None
            ),
            [Rollback(reason=WATCHDOG_REASON, rollout=RID)],
        ),
    ]


def _rollback_cases() -> list[Case]:
    at = NOW + 60 * SEC
    rolling_switch = booted(
        phase=Phase.ROLLING_BACK,
        persisted=replace(FETCHED_P, last_failed_closure=FAILED_NEW),
        rollback=SWITCH_PLAN,
    )
    after_switch_p = persisted(
        last_fetch_outcome=wire.FetchOutcome(result="ok", rollout_id=RID),
        last_failed_closure=FAILED_NEW,
    )
    rolling_watchdog = replace(
        CONFIRMING, phase=Phase.ROLLING_BACK, rollback=WATCHDOG_PLAN, confirm_deadline=None
    )
    # Silence is not held against the closure: no last_failed_closure entry.
    after_watchdog_p = persisted(
        last_fetch_outcome=wire.FetchOutcome(result="ok", rollout_id=RID),
    )
    rolling_410 = replace(
        CONFIRMING,
        phase=Phase.ROLLING_BACK,
        rollback=RollbackPlan(
            prefix=CP_410_PREFIX, reason=CP_410_REASON, rollout=RID, restores=OLD
        ),
        confirm_deadline=None,
    )
    signal_state = booted(
        phase=Phase.ROLLING_BACK,
        current=NEW,
        previous=OLD,
        persisted=CONFIRMED_P,
        rollback=RollbackPlan(
            prefix=CP_SIGNAL_PREFIX,
            reason=SIGNAL.reason,
            rollout=RID,
            restores=OLD,
            then_target=PendingTarget(target=T2, received_at=NOW),
        ),
    )
    return [
        Case(
            "rollback ok after switch failure => activation-failed then rollback-triggered",
            rolling_switch,
            RollbackDone(ok=True),
            at,
            booted(persisted=after_switch_p),
            [
                PersistState(state=after_switch_p),
                report(wire.ACTIVATION_FAILED, RID, at, phase="switch-poll-timeout", exit_code=3),
                report(
                    wire.ROLLBACK_TRIGGERED,
                    RID,
                    at,
                    reason="activation-failed: switch-poll-timeout",
                ),
            ],
        ),
        Case(
            "rollback failed after switch failure => activation-failed twice (prefixed)",
            rolling_switch,
            RollbackDone(ok=False, phase="nix-env-rollback", exit_code=1),
            at,
            booted(persisted=after_switch_p),
            [
                PersistState(state=after_switch_p),
                report(wire.ACTIVATION_FAILED, RID, at, phase="switch-poll-timeout", exit_code=3),
                report(
                    wire.ACTIVATION_FAILED,
                    RID,
                    at,
                    phase="switch-poll-timeout/nix-env-rollback",
                    exit_code=1,
                ),
            ],
        ),
        Case(
            "watchdog rollback ok => back on previous, not quarantined, report",
            rolling_watchdog,
            RollbackDone(ok=True, current_closure=OLD),
            at,
            booted(current=OLD, previous=NEW, persisted=after_watchdog_p),
            [
                PersistState(state=after_watchdog_p),
                report(wire.ROLLBACK_TRIGGERED, RID, at, reason=WATCHDOG_REASON),
            ],
        ),
        Case(
            "watchdog rollback failed => record kept (retried on the next tick)",
            rolling_watchdog,
            RollbackDone(ok=False, phase="rollback-poll-timeout"),
            at,
            booted(current=NEW, previous=OLD, persisted=FETCHED_P),
            [
                report(
                    wire.ACTIVATION_FAILED,
                    RID,
                    at,
                    phase=f"{WATCHDOG_PREFIX}/rollback-poll-timeout",
                )
            ],
        ),
        Case(
            "410 rollback ok => rollback-triggered with the cp-410 reason",
            rolling_410,
            RollbackDone(ok=True, current_closure=OLD),
            at,
            booted(
                current=OLD,
                previous=NEW,
                persisted=persisted(
                    last_fetch_outcome=wire.FetchOutcome(result="ok", rollout_id=RID)
                ),
            ),
            [
                PersistState(
                    state=persisted(
                        last_fetch_outcome=wire.FetchOutcome(result="ok", rollout_id=RID)
                    )
                ),
                report(wire.ROLLBACK_TRIGGERED, RID, at, reason=CP_410_REASON),
            ],
        ),
        Case(
            "CP-signalled rollback failed => activation-failed, held target dropped",
            signal_state,
            RollbackDone(ok=False, phase="discover-target", stderr_tail="no generation"),
            at,
            booted(current=NEW, previous=OLD, persisted=CONFIRMED_P),
            [
                report(
                    wire.ACTIVATION_FAILED,
                    RID,
                    at,
                    phase=f"{CP_SIGNAL_PREFIX}/discover-target",
                    stderr_tail="no generation",
                )
            ],
        ),
        Case(
            "CP-signalled rollback ok => report, then the held target",
            signal_state,
            RollbackDone(ok=True, current_closure=OLD),
            at,
            booted(
                phase=Phase.FETCHING_MANIFEST,
                current=OLD,
                previous=NEW,
                persisted=CONFIRMED_P,
                target=PendingTarget(target=T2, received_at=NOW),
            ),
            [
                report(wire.ROLLBACK_TRIGGERED, RID, at, reason=SIGNAL.reason),
                FetchManifest(rollout_id=RID2, wave_index=0),
            ],
        ),
    ]


def _bookkeeping_cases() -> list[Case]:
    return [
        Case("report sent => no-op", CHECKING_IN, ReportSent(), NOW, CHECKING_IN, []),
        Case("report failed => no-op", booted(), ReportFailed(reason="x"), NOW, booted(), []),
        Case("state persisted => no-op", FETCHING, StatePersisted(), NOW, FETCHING, []),
        Case("tick while activating => no-op", ACTIVATING, PollTick(), NOW, ACTIVATING, []),
    ]


CASES = (
    _boot_cases()
    + _checkin_cases()
    + _target_cases()
    + _activation_cases()
    + _confirm_cases()
    + _rollback_cases()
    + _bookkeeping_cases()
)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_transition(case: Case) -> None:
    assert step(case.state, case.event, case.now) == (case.expected_state, case.expected_actions)


def test_every_table_entry_has_a_case() -> None:
    covered = {(c.state.phase, type(c.event)) for c in CASES}
    ignored = {
        key
        for key in TRANSITIONS
        if key[1] in (ReportSent, ReportFailed, StatePersisted)
        or (key[1] is PollTick and key[0] not in (Phase.IDLE, Phase.CONFIRM_WINDOW))
    }
    assert set(TRANSITIONS) - ignored <= covered


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (booted(), ConfirmAnswered(status=204)),
        (booted(), FiredAndPolled()),
        (booted(), Boot(current_closure=OLD)),
        (AgentState(hostname=HOST), PollTick()),
        (CHECKING_IN, ManifestOk()),
        (ACTIVATING, CheckinOk(response=wire.CheckinResponse())),
        (WINDOW_STATE, CheckinOk(response=wire.CheckinResponse())),
    ],
)
def test_illegal_transition(state: AgentState, event: AgentEvent) -> None:
    with pytest.raises(IllegalTransition):
        step(state, event, NOW)


def test_naive_now_is_bad_input() -> None:
    with pytest.raises(BadInput):
        step(booted(), PollTick(), datetime(2026, 4, 24, 10, 0))


def test_seed_quoted_reasons_byte_for_byte() -> None:
    assert CP_410_REASON == "cp-410: rollout cancelled or deadline expired"
    assert WATCHDOG_REASON == "watchdog: no confirm before deadline"


def test_closures_sharing_the_store_hash_are_distinct_basenames() -> None:
    assert closure_hash_from_path(f"/nix/store/{NEW}") == NEW
    assert closure_hash_from_path(f"/nix/store/{NEW_RC}") == NEW_RC
    assert NEW.split("-", 1)[0] == NEW_RC.split("-", 1)[0]


# --- a scripted world pumping the session ----------------------------------------------------


@dataclass
class World:
    """Answers each action; records every action the session returned."""

    checkin: Callable[[int, datetime], AgentEvent] = lambda n, now: response()
    activate: Callable[[int], AgentEvent] = lambda n: FiredAndPolled()
    confirm: Callable[[int, datetime], AgentEvent] = lambda n, now: ConfirmAnswered(status=204)
    rollback_ok: bool = True
    current: ClosureHash = OLD
    previous: ClosureHash | None = None

    def __post_init__(self) -> None:
        self.log: list[tuple[datetime, AgentAction]] = []
        self.checkins = 0
        self.activations = 0
        self.confirms = 0

    def perform(self, action: AgentAction, now: datetime) -> AgentEvent:
        match action:
            case Checkin():
                self.checkins += 1
                return self.checkin(self.checkins, now)
            case FetchManifest():
                return ManifestOk()
            case FetchClosure():
                return FetchDone()
            case Activate(closure_hash=closure):
                self.activations += 1
                outcome = self.activate(self.activations)
                self.previous = self.current  # the profile moved (nix-env --set)
                if isinstance(outcome, FiredAndPolled):
                    self.current = closure
                return outcome
            case SendConfirm():
                self.confirms += 1
                return self.confirm(self.confirms, now)
            case Rollback():
                if not self.rollback_ok:
                    return RollbackDone(ok=False, phase="nix-env-rollback")
                assert self.previous is not None
                self.current, self.previous = self.previous, self.current
                return RollbackDone(ok=True, current_closure=self.current)
            case Report():
                return ReportSent()
            case PersistState():
                return StatePersisted()
            case Sleep():
                return PollTick()
        raise AssertionError(action)

    def run(
        self, session: AgentSession, now: datetime, *, until: Callable[[World], bool]
    ) -> datetime:
        for _ in range(2000):
            if until(self):
                return now
            action = session.next_action()
            self.log.append((now, action))
            if isinstance(action, Sleep):
                now = max(now, action.until)
            event = self.perform(action, now)
            session.feed(event, now)
        raise AssertionError("world did not settle")

    def actions(self, kind: type) -> list[Any]:
        return [a for _, a in self.log if isinstance(a, kind)]

    def reports(self) -> list[str]:
        return [a.event for _, a in self.log if isinstance(a, Report)]


def new_session(current: ClosureHash = OLD, **kw: Any) -> AgentSession:
    session = AgentSession(AgentState(hostname=HOST, agent_version=VERSION), **kw)
    session.feed(Boot(current_closure=current, boot_id=BOOT_ID), NOW)
    return session


def test_same_target_after_confirm_is_never_activated_again() -> None:
    """Seed 000 ghost loop: five more checkins returning the same target => 1 Activate."""
    world = World(checkin=lambda n, now: response(target(signed_at=now - HOUR)))
    session = new_session()
    world.run(session, NOW, until=lambda w: w.checkins == 6)
    assert world.activations == 1
    assert world.confirms == 1
    assert world.actions(Activate) == [Activate(closure_hash=NEW)]
    reported = [a.request.current_generation.closure_hash for a in world.actions(Checkin)]
    assert reported == [OLD] + [NEW] * 5  # the full basename, never the 32-char hash
    assert session.state.persisted.last_confirmed_at is not None
    assert session.state.persisted.last_dispatched is None


def test_watchdog_fires_exactly_at_the_deadline() -> None:
    """CP answers 503 to every confirm: Sleep lands on the deadline, not before."""
    world = World(
        checkin=lambda n, now: response(target(signed_at=now - HOUR)),
        confirm=lambda n, now: ConfirmAnswered(status=503),
    )
    session = new_session(confirm_retry_secs=7)
    now = world.run(session, NOW, until=lambda w: w.confirms == 1)
    received = next(t for t, a in world.log if isinstance(a, Checkin))
    deadline = received + WINDOW
    assert session.state.confirm_deadline == deadline
    now = world.run(session, now, until=lambda w: any(isinstance(a, Rollback) for _, a in w.log))
    assert now == deadline
    sleeps = [a.until for _, a in world.log if isinstance(a, Sleep)]
    assert sleeps[-1] == deadline
    assert all(until <= deadline for until in sleeps)
    confirm_times = [t for t, a in world.log if isinstance(a, SendConfirm)]
    assert confirm_times and max(confirm_times) < deadline
    assert world.actions(Rollback) == [Rollback(reason=WATCHDOG_REASON, rollout=RID)]


@pytest.mark.parametrize(
    ("left", "expected"),
    [
        (None, 10.0),  # no deadline known: the cap
        (360.0, 10.0),  # a long window: the cap
        (20.0, 5.0),  # a quarter of what is left
        (1.0, 0.5),  # never under half a second
        (-3.0, 0.5),
    ],
)
def test_confirm_retry_delay(left: float | None, expected: float) -> None:
    deadline = None if left is None else NOW + timedelta(seconds=left)
    assert confirm_retry_delay(deadline, NOW, 10.0) == timedelta(seconds=expected)


def confirm_times(
    window_secs: int, confirm: Callable[[int, datetime], AgentEvent], **session_kw: Any
) -> list[float]:
    """Seconds after the dispatch at which the session sent each confirm, until the
    first 204 or the watchdog rollback."""
    world = World(
        checkin=lambda n, now: response(
            target(signed_at=now - HOUR, activate=wire.Activate(confirm_window_secs=window_secs))
        ),
        confirm=confirm,
    )
    session = new_session(**session_kw)
    world.run(
        session,
        NOW,
        until=lambda w: bool(w.actions(Rollback)) or session.state.persisted.last_confirmed_at,
    )
    return [(t - NOW).total_seconds() for t, a in world.log if isinstance(a, SendConfirm)]


@pytest.mark.parametrize("window_secs", [10, 30, 360])
def test_at_least_three_confirm_retries_fit_in_any_window(window_secs: int) -> None:
    """A fixed 10 s retry left no retry at all inside a 10 s window (issue 9 #11)."""
    sent = confirm_times(window_secs, lambda n, now: ConfirmFailed(reason="cp restarting"))
    assert len(sent) >= 4  # the first confirm and at least 3 retries
    assert all(t < window_secs for t in sent)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert min(gaps) >= 0.5 and max(gaps) <= 10


def test_a_confirm_is_retried_no_later_than_the_next_poll() -> None:
    """An agent polling every 2 s whose confirm failed while the CP restarted waited
    7.5 s (a quarter of a 30 s window) to try again: longer than the 2 polls within
    which seed 001 wants every agent back."""
    sent = confirm_times(
        30, lambda n, now: ConfirmFailed(reason="cp restarting"), poll_interval_secs=2
    )
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert len(sent) >= 10 and max(gaps) <= 2


def test_a_short_cp_outage_inside_a_10_s_window_costs_no_rollback() -> None:
    """The CP restarts for 1 s just as the agent confirms: the next retry lands."""
    sent = confirm_times(
        10,
        lambda n, now: (
            ConfirmFailed(reason="connection refused")
            if now < NOW + SEC
            else ConfirmAnswered(status=204)
        ),
    )
    assert sent == [0.0, 2.5]


def test_watchdog_early_wake_is_ignored_then_fires_at_deadline() -> None:
    session = AgentSession(WINDOW_STATE)  # no retry scheduled: only the watchdog wakes it
    assert session.next_action() == Sleep(until=DEADLINE)
    session.feed(PollTick(), DEADLINE - US)
    assert drain(session) == []
    assert session.state == WINDOW_STATE
    session.feed(PollTick(), DEADLINE)
    assert drain(session) == [Rollback(reason=WATCHDOG_REASON, rollout=RID)]


def test_confirm_410_rolls_back_and_reports() -> None:
    world = World(
        checkin=lambda n, now: response(target(signed_at=now - HOUR)),
        confirm=lambda n, now: ConfirmAnswered(status=410),
    )
    session = new_session()
    world.run(session, NOW, until=lambda w: wire.ROLLBACK_TRIGGERED in w.reports())
    assert world.actions(Rollback) == [Rollback(reason=CP_410_REASON, rollout=RID)]
    last = world.actions(Report)[-1]
    assert last.details == {"reason": "cp-410: rollout cancelled or deadline expired"}
    assert world.current == OLD
    assert session.state.current == OLD
    assert session.state.persisted.last_dispatched is None


def test_activation_failure_rolls_back_then_reports() -> None:
    world = World(
        checkin=lambda n, now: response(target(signed_at=now - HOUR)),
        activate=lambda n: SwitchFailed(phase="systemd-run-fire", exit_code=1),
    )
    session = new_session()
    world.run(session, NOW, until=lambda w: wire.ROLLBACK_TRIGGERED in w.reports())
    kinds = [
        type(a).__name__ if not isinstance(a, Report) else a.event
        for _, a in world.log
        if not isinstance(a, PersistState | Sleep)
    ]
    assert kinds[-4:] == ["Activate", "Rollback", "activation-failed", "rollback-triggered"]
    failed = session.state.persisted.last_failed_closure
    assert failed is not None
    assert (failed.closure_hash, failed.failure_count) == (NEW, 1)


def feed_all(
    state: AgentState, events: list[AgentEvent], now: datetime
) -> tuple[AgentState, list[AgentAction]]:
    out: list[AgentAction] = []
    for event in events:
        state, actions = step(state, event, now)
        out += actions
    return state, out


def offer(state: AgentState, now: datetime) -> tuple[AgentState, list[AgentAction]]:
    """A checkin reply carrying the target, then (if asked for) the manifest verifies."""
    state, actions = feed_all(
        replace(state, phase=Phase.CHECKING_IN), [response(target(signed_at=now - HOUR))], now
    )
    if state.phase is Phase.FETCHING_MANIFEST:
        state, more = step(state, ManifestOk(), now)
        actions += more
    return state, [a for a in actions if not isinstance(a, PersistState)]


def reported(actions: list[AgentAction]) -> list[str]:
    return [a.event for a in actions if isinstance(a, Report)]


def test_quarantine_after_failure_within_24h() -> None:
    def fail(state: AgentState, now: datetime) -> AgentState:
        state, _ = feed_all(
            state,
            [
                FetchDone(),
                SwitchFailed(phase="switch-poll-timeout", exit_code=1),
                RollbackDone(ok=True, current_closure=OLD),
            ],
            now,
        )
        return state

    state, actions = offer(booted(), NOW)
    assert FetchClosure(closure_hash=NEW) in actions
    state = fail(state, NOW)
    # Within 24 h: quarantined, reported at most once per hour, never activated.
    for offset, reports in [
        (HOUR, [wire.CLOSURE_QUARANTINED]),
        (HOUR + 30 * 60 * SEC, []),
        (2 * HOUR - US, []),
        (2 * HOUR, [wire.CLOSURE_QUARANTINED]),
        (24 * HOUR, [wire.CLOSURE_QUARANTINED]),
    ]:
        state, actions = offer(state, NOW + offset)
        assert reported(actions) == reports, offset
        assert not any(isinstance(a, FetchClosure | Activate) for a in actions)
        assert state.phase is Phase.IDLE
        for a in actions:
            if isinstance(a, Report):
                assert a.details == {
                    "closure_hash": NEW,
                    "channel_ref": RID,
                    "failure_count": 1,
                    "reason": "switch-poll-timeout",
                }
    # After 24 h it is tried again; failing again counts 2.
    state, actions = offer(state, NOW + 24 * HOUR + US)
    assert FetchClosure(closure_hash=NEW) in actions
    state = fail(state, NOW + 25 * HOUR)
    failed = state.persisted.last_failed_closure
    assert failed is not None
    assert failed.failure_count == 2


def test_rollback_signal_is_handled_before_the_target_and_idempotently() -> None:
    state = booted(phase=Phase.CHECKING_IN, current=NEW, previous=OLD, persisted=CONFIRMED_P)
    state, actions = step(state, response(T2, SIGNAL), NOW)
    assert actions == [Rollback(reason=SIGNAL.reason, rollout=RID)]
    state, actions = step(state, RollbackDone(ok=True, current_closure=OLD), NOW + SEC)
    assert actions == [
        report(wire.ROLLBACK_TRIGGERED, RID, NOW + SEC, reason=SIGNAL.reason),
        FetchManifest(rollout_id=RID2, wave_index=0),
    ]
    # The CP repeats the signal until it sees the report: no second rollback.
    state, actions = step(replace(state, phase=Phase.CHECKING_IN), response(None, SIGNAL), NOW)
    assert actions == [report(wire.ROLLBACK_TRIGGERED, RID, NOW, reason=SIGNAL.reason)]
    assert state.phase is Phase.IDLE


def test_failed_rollback_is_retried_and_checkin_still_happens() -> None:
    state = booted(current=NEW, previous=OLD, persisted=persisted(last_dispatched=D))
    state, actions = step(state, PollTick(), DEADLINE)
    assert actions == [Rollback(reason=WATCHDOG_REASON, rollout=RID)]
    state, actions = step(state, RollbackDone(ok=False, phase="nix-env-rollback"), DEADLINE + SEC)
    assert [type(a) for a in actions] == [Report, Checkin]
    assert state.persisted.last_dispatched == D  # kept: not safe to clear
    state, actions = step(state, CheckinFailed(reason="x"), DEADLINE + SEC)
    state, actions = step(state, PollTick(), DEADLINE + 60 * SEC)
    assert actions == [Rollback(reason=WATCHDOG_REASON, rollout=RID)]


def test_boot_recovery_deferred_reboot_round_trip() -> None:
    world = World(
        checkin=lambda n, now: response(target(signed_at=now - HOUR)),
        activate=lambda n: DeferredPendingReboot(component="kernel"),
    )
    session = new_session()
    now = world.run(session, NOW, until=lambda w: w.checkins == 3)
    assert world.activations == 1  # the re-sent target waits for the reboot silently
    saved = PersistedState.from_files(session.state.persisted.to_files())
    assert saved.last_deferred is not None and saved.last_dispatched is not None
    # Reboot into the deferred closure: the new process confirms it.
    reboot = now + HOUR
    session = AgentSession(AgentState.restore(hostname=HOST, persisted=saved))
    session.feed(Boot(current_closure=NEW, boot_id="boot-2"), reboot)
    actions = drain(session)
    assert isinstance(actions[-1], SendConfirm)
    assert session.state.confirm_deadline == reboot + WINDOW
    session.feed(ConfirmAnswered(status=204), reboot + SEC)
    drain(session)
    assert session.state.persisted.last_deferred is None
    assert session.state.persisted.last_dispatched is None


# --- session bookkeeping ------------------------------------------------------------------


def drain(session: AgentSession) -> list[AgentAction]:
    out: list[AgentAction] = []
    while session.pending:
        out.append(session.next_action())
    return out


def test_checkin_backoff_formula() -> None:
    assert checkin_backoff(60, 0, 1.0) == timedelta(seconds=60)
    assert checkin_backoff(60, 1, 1.0) == timedelta(seconds=120)
    assert checkin_backoff(60, 3, 0.8) == timedelta(seconds=384)
    assert checkin_backoff(60, 9, 1.2) == timedelta(seconds=576)


def test_session_backoff_uses_the_injected_jitter() -> None:
    factors = iter([1.1, 0.9, 1.2, 0.8])
    session = new_session(poll_interval_secs=60, jitter=lambda: next(factors))
    now = NOW
    # 60 × 2^(failures before) × jitter: 60·1.1, 120·0.9, 240·1.2, 480·0.8
    expected = [66, 108, 288, 384]
    for delay in expected:
        session.feed(PollTick(), now)
        assert isinstance(drain(session)[-1], Checkin)
        session.feed(CheckinFailed(reason="unreachable"), now)
        assert session.next_action() == Sleep(until=now + timedelta(seconds=delay))
        now += timedelta(seconds=delay)
    session.feed(PollTick(), now)
    drain(session)
    session.feed(response(), now)
    assert session.state.checkin_failures == 0
    assert session.next_action() == Sleep(until=now + timedelta(seconds=60))


def test_session_needs_boot_first() -> None:
    session = AgentSession(AgentState(hostname=HOST))
    with pytest.raises(IllegalTransition):
        session.next_action()
    with pytest.raises(IllegalTransition):
        session.feed(PollTick(), NOW)


def test_session_keeps_state_on_illegal_event() -> None:
    session = new_session()
    before = session.state
    with pytest.raises(IllegalTransition):
        session.feed(ConfirmAnswered(status=204), NOW)
    assert session.state == before


def test_bad_jitter_is_refused() -> None:
    session = new_session(jitter=lambda: 0.0)
    session.feed(PollTick(), NOW)
    drain(session)
    with pytest.raises(BadInput):
        session.feed(CheckinFailed(reason="x"), NOW)


# --- persistence -------------------------------------------------------------------------------

FULL = PersistedState(
    last_dispatched=LastDispatched(
        target=target(wave=2), dispatched_at=NOW, confirm_deadline=NOW + WINDOW
    ),
    last_confirmed_at=LastConfirmed(closure_hash=OLD, confirmed_at=NOW - HOUR + 500 * US),
    last_target=target(OLD, rid=RID2),
    last_fetch_outcome=wire.FetchOutcome(result="verify-failed", rollout_id=RID, error="sig"),
    last_deferred=LastDeferred(
        closure_hash=NEW, channel_ref=RID, component="systemd", deferred_at=NOW
    ),
    last_failed_closure=LastFailedClosure(
        closure_hash=OTHER,
        channel_ref=RID2,
        failure_count=3,
        last_failure_at=NOW - HOUR,
        reason="switch-poll-timeout",
        last_quarantine_post_at=NOW,
    ),
)


def test_persisted_state_round_trips_through_json() -> None:
    text = json.dumps(FULL.to_json())
    assert PersistedState.from_json(json.loads(text)) == FULL
    assert PersistedState.from_json({}) == PersistedState()
    assert PersistedState().to_json() == {}


def test_persisted_state_round_trips_through_files() -> None:
    files = FULL.to_files()
    assert files["last_confirmed_at"] == f"{OLD}\n{format_instant(NOW - HOUR + 500 * US)}\n"
    assert PersistedState.from_files({k: v for k, v in files.items() if v is not None}) == FULL
    assert PersistedState().to_files() == dict.fromkeys(files)


def test_restored_state_round_trips_through_a_session() -> None:
    state = AgentState.restore(hostname=HOST, agent_version=VERSION, persisted=FULL)
    assert state.phase is Phase.START
    again = PersistedState.from_files(
        {k: v for k, v in state.persisted.to_files().items() if v is not None}
    )
    assert AgentState.restore(hostname=HOST, agent_version=VERSION, persisted=again) == state


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("last_dispatched", "{"),
        ("last_dispatched", '{"dispatchedAt": "x"}'),
        ("last_confirmed_at", "only-one-line\n"),
        ("last_confirmed_at", f"{OLD}\nyesterday\n"),
        ("last_target", "[]"),
        ("last_fetch_outcome", '{"result": "maybe"}'),
        ("last_deferred", '{"closureHash": 3}'),
        ("last_failed_closure", '{"closureHash": "x", "failureCount": 0}'),
        ("last_target", ""),
        ("last_confirmed_at", " \n"),
    ],
)
def test_malformed_state_file_reads_as_absent(name: str, text: str) -> None:
    files = {k: v for k, v in FULL.to_files().items() if v is not None}
    files[name] = text
    loaded, problems = PersistedState.read_files(files)
    assert PersistedState.from_files(files) == loaded
    assert getattr(loaded, name) is None
    assert list(problems) == [name] and problems[name]  # says which file, and why
    for other in files:
        if other != name:
            assert getattr(loaded, other) == getattr(FULL, other)


def test_dispatch_record_disagreeing_with_its_target_is_absent() -> None:
    obj = FULL.to_json()
    obj["last_dispatched"]["closureHash"] = OTHER
    assert PersistedState.from_json(obj).last_dispatched is None
    assert PersistedState.from_json("not an object") == PersistedState()


def test_checkin_reports_last_confirmed_only_for_the_running_closure() -> None:
    state = booted(current=NEW, persisted=CONFIRMED_P)
    _, actions = step(state, PollTick(), NOW + HOUR)
    (checkin,) = actions
    assert isinstance(checkin, Checkin)
    assert checkin.request.last_confirmed_at == NOW + 30 * SEC
    assert checkin.request.last_evaluated_target == T
    assert checkin.request.current_generation.channel_ref == RID
    _, actions = step(replace(state, current=OLD), PollTick(), NOW + HOUR)
    assert isinstance(actions[0], Checkin)
    assert actions[0].request.last_confirmed_at is None
    # Never from the future.
    _, actions = step(state, PollTick(), NOW)
    assert isinstance(actions[0], Checkin)
    assert actions[0].request.last_confirmed_at is None


# --- property tests ----------------------------------------------------------------------------

CLOSURES = st.sampled_from([OLD, NEW, NEW_RC, OTHER])
ROLLOUTS = st.sampled_from([RID, RID2])
OFFSETS = st.sampled_from(
    [timedelta(0), US, SEC, 10 * SEC, 60 * SEC, 359 * SEC, WINDOW, HOUR, 25 * HOUR]
)


@st.composite
def targets(draw: st.DrawFn) -> wire.EvaluatedTarget:
    return target(
        draw(CLOSURES),
        rid=draw(ROLLOUTS),
        signed_at=NOW - draw(st.sampled_from([timedelta(0), HOUR, 30 * HOUR])),
        window_secs=draw(st.sampled_from([3600, 86_400])),
        activate=draw(st.sampled_from([wire.Activate(), None])),
        wave=draw(st.sampled_from([None, 0, 1])),
    )


SIGNALS = st.builds(
    wire.RollbackSignal, rollout=ROLLOUTS, target_ref=ROLLOUTS, reason=st.just("policy")
)
EVENTS: st.SearchStrategy[AgentEvent] = st.one_of(
    st.builds(Boot, current_closure=CLOSURES, boot_id=st.just(BOOT_ID)),
    st.just(PollTick()),
    st.builds(lambda t, r: response(t, r), st.none() | targets(), st.none() | SIGNALS),
    st.just(CheckinFailed(reason="unreachable")),
    st.just(ManifestOk()),
    st.builds(
        ManifestFailed,
        kind=st.sampled_from(["missing", "verify-failed", "mismatch"]),
        reason=st.just("r"),
    ),
    st.just(FetchDone()),
    st.builds(FetchFailed, reason=st.just("r"), signature_mismatch=st.booleans()),
    st.just(FiredAndPolled()),
    st.builds(
        SwitchFailed,
        phase=st.sampled_from(["nix-env-set", "systemd-run-fire", "switch-poll-timeout"]),
        exit_code=st.none() | st.just(1),
    ),
    st.builds(VerifyMismatch, expected=CLOSURES, actual=CLOSURES),
    st.builds(DeferredPendingReboot, component=st.sampled_from(["kernel", "dbus"])),
    st.builds(RealiseFailed, reason=st.just("lock")),
    st.builds(SignatureMismatch, stderr_tail=st.just("untrusted")),
    st.builds(SpawnFailed, detail=st.just("ENOENT")),
    st.builds(ConfirmAnswered, status=st.sampled_from([204, 410, 500, 503])),
    st.just(ConfirmFailed(reason="unreachable")),
    st.builds(
        RollbackDone,
        ok=st.booleans(),
        phase=st.just("nix-env-rollback"),
        current_closure=st.none() | CLOSURES,
    ),
    st.just(ReportSent()),
    st.just(StatePersisted()),
)
SWITCH_OUTCOMES = (
    FiredAndPolled,
    SwitchFailed,
    VerifyMismatch,
    DeferredPendingReboot,
    RealiseFailed,
    SignatureMismatch,
    SpawnFailed,
)


class Invariants:
    """Switches in flight (Activate/Rollback emitted, result not yet accepted) ≤ 1;
    no Activate of the running closure; every report matches the §2.7 catalogue."""

    def __init__(self, session: AgentSession) -> None:
        self.session = session
        self.in_flight = 0
        self.emitted: list[AgentAction] = []

    def feed(self, event: AgentEvent, now: datetime, *, drain_after: bool = True) -> None:
        phase = self.session.state.phase
        queued = len(self.session.pending)
        try:
            self.session.feed(event, now)
        except NixfleetError:
            assert len(self.session.pending) == queued
            return
        if isinstance(event, SWITCH_OUTCOMES) and phase is Phase.ACTIVATING:
            self.in_flight -= 1
        if isinstance(event, RollbackDone) and phase is Phase.ROLLING_BACK:
            self.in_flight -= 1
        assert self.in_flight >= 0
        state = self.session.state
        for action in self.session.pending[queued:]:
            self.emitted.append(action)
            if isinstance(action, Activate | Rollback):
                self.in_flight += 1
                assert self.in_flight <= 1, "two switches in flight"
            if isinstance(action, Activate):
                assert action.closure_hash != state.current
            if isinstance(action, Report):
                wire.check_details(action.event, action.details)
            if isinstance(action, SendConfirm):
                assert state.confirm_deadline is not None
        assert (state.phase in (Phase.ACTIVATING, Phase.ROLLING_BACK)) == (self.in_flight == 1)
        if drain_after:
            drain(self.session)


ACTIVATION_OUTCOMES: st.SearchStrategy[AgentEvent] = st.one_of(
    st.just(FiredAndPolled()),
    st.builds(
        SwitchFailed,
        phase=st.sampled_from(["nix-env-set", "systemd-run-fire", "switch-poll-timeout"]),
        exit_code=st.none() | st.just(1),
    ),
    st.builds(VerifyMismatch, expected=CLOSURES, actual=CLOSURES),
    st.builds(DeferredPendingReboot, component=st.sampled_from(["kernel", "dbus"])),
    st.builds(RealiseFailed, reason=st.just("lock")),
    st.builds(SignatureMismatch, stderr_tail=st.just("untrusted")),
    st.builds(SpawnFailed, detail=st.just("ENOENT")),
)
ANSWERS: dict[type, st.SearchStrategy[AgentEvent]] = {
    Sleep: st.just(PollTick()),
    Checkin: st.just(CheckinFailed(reason="unreachable")),  # see checkin_answers
    FetchManifest: st.one_of(
        st.just(ManifestOk()),
        st.just(ManifestOk()),
        st.just(ManifestOk()),
        st.builds(ManifestFailed, kind=st.just("missing"), reason=st.just("404")),
    ),
    FetchClosure: st.one_of(
        st.just(FetchDone()),
        st.just(FetchDone()),
        st.just(FetchDone()),
        st.builds(FetchFailed, reason=st.just("r"), signature_mismatch=st.booleans()),
    ),
    Activate: ACTIVATION_OUTCOMES,
    SendConfirm: st.one_of(
        st.builds(ConfirmAnswered, status=st.sampled_from([204, 410, 503, 503])),
        st.just(ConfirmFailed(reason="unreachable")),
    ),
    Rollback: st.builds(
        RollbackDone,
        ok=st.booleans(),
        phase=st.just("nix-env-rollback"),
        current_closure=st.none() | CLOSURES,
    ),
}


def checkin_answers(now: datetime) -> st.SearchStrategy[AgentEvent]:
    """Mostly a fresh target to activate; sometimes none, stale, converged or a signal."""
    fresh = st.builds(
        lambda closure, rid, activate, signal: response(
            target(closure, rid=rid, signed_at=now - HOUR, activate=activate), signal
        ),
        st.sampled_from([NEW, NEW_RC, OTHER, NEW, OTHER]),
        ROLLOUTS,
        st.sampled_from([wire.Activate(), wire.Activate(), wire.Activate(), None]),
        st.sampled_from([None, None, None, None, SIGNAL]),
    )
    odd = st.builds(lambda t, r: response(t, r), st.none() | targets(), st.none() | SIGNALS)
    return st.one_of(fresh, fresh, fresh, odd, st.just(CheckinFailed(reason="unreachable")))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data(), boot=st.booleans())
def test_random_events_only_raise_nixfleet_errors(data: st.DataObject, boot: bool) -> None:
    """Mostly plausible answers to the last action, with arbitrary events in between."""
    session = AgentSession(AgentState(hostname=HOST, agent_version=VERSION))
    checker = Invariants(session)
    now = NOW
    if boot:
        checker.feed(Boot(current_closure=OLD, boot_id=BOOT_ID), now)
    last: type | None = None
    for _ in range(data.draw(st.integers(0, 60), label="steps")):
        now += data.draw(st.sampled_from([timedelta(0), SEC, 10 * SEC]) | OFFSETS, label="elapsed")
        if last is None or data.draw(st.integers(0, 4), label="noise") == 0:
            event = data.draw(st.just(PollTick()) | EVENTS, label="noise event")
        elif last is Checkin:
            event = data.draw(checkin_answers(now), label="checkin answer")
        else:
            event = data.draw(ANSWERS[last], label="answer")
        before = len(checker.emitted)
        checker.feed(event, now)
        for action in checker.emitted[before:]:
            if type(action) in ANSWERS:
                last = type(action)
        if session.state.phase in (Phase.IDLE, Phase.CONFIRM_WINDOW):
            last = Sleep  # the shell sleeps, then ticks


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    checkins=st.lists(st.none() | targets(), min_size=1, max_size=6),
    signals=st.lists(st.none() | SIGNALS, min_size=1, max_size=3),
    outcomes=st.lists(st.sampled_from(SWITCH_OUTCOMES), min_size=1, max_size=4),
    confirms=st.lists(st.sampled_from([204, 410, 503, None]), min_size=1, max_size=4),
    rollbacks=st.lists(st.booleans(), min_size=1, max_size=3),
    durations=st.lists(OFFSETS, min_size=1, max_size=5),
)
def test_pumped_agent_keeps_its_invariants(
    checkins: list[wire.EvaluatedTarget | None],
    signals: list[wire.RollbackSignal | None],
    outcomes: list[type],
    confirms: list[int | None],
    rollbacks: list[bool],
    durations: list[timedelta],
) -> None:
    """A plausible world answering each action; the agent never runs two switches at
    once, never re-activates its running closure, and the watchdog always fires by the
    deadline while no 204 came."""
    session = AgentSession(AgentState(hostname=HOST, agent_version=VERSION))
    checker = Invariants(session)
    now = NOW
    current = OLD
    checker.feed(Boot(current_closure=current, boot_id=BOOT_ID), now, drain_after=False)
    deadline: datetime | None = None
    for n in range(1, 121):
        action = session.next_action()
        event: AgentEvent
        match action:
            case Sleep(until=until):
                deadline = session.state.confirm_deadline
                if session.state.phase is Phase.CONFIRM_WINDOW:
                    assert deadline is not None and until <= deadline
                now = max(now, until)
                event = PollTick()
            case Checkin():
                now += durations[n % len(durations)] // 60
                event = response(checkins[n % len(checkins)], signals[n % len(signals)])
            case FetchManifest() | FetchClosure():
                event = ManifestOk() if isinstance(action, FetchManifest) else FetchDone()
            case Activate(closure_hash=closure):
                now += durations[n % len(durations)]
                kind = outcomes[n % len(outcomes)]
                answers: dict[type, AgentEvent] = {
                    FiredAndPolled: FiredAndPolled(),
                    SwitchFailed: SwitchFailed(phase="switch-poll-timeout", exit_code=1),
                    VerifyMismatch: VerifyMismatch(expected=closure, actual=OTHER),
                    DeferredPendingReboot: DeferredPendingReboot(component="kernel"),
                    RealiseFailed: RealiseFailed(reason="lock"),
                    SignatureMismatch: SignatureMismatch(stderr_tail="x"),
                    SpawnFailed: SpawnFailed(detail="x"),
                }
                event = answers[kind]
                if isinstance(event, FiredAndPolled):
                    current = closure
            case SendConfirm():
                now += durations[n % len(durations)] // 60
                status = confirms[n % len(confirms)]
                event = (
                    ConfirmFailed(reason="unreachable")
                    if status is None
                    else ConfirmAnswered(status=status)
                )
            case Rollback():
                ok = rollbacks[n % len(rollbacks)]
                event = RollbackDone(ok=ok, phase=None if ok else "nix-env-rollback")
            case Report():
                event = ReportSent()
            case PersistState():
                event = StatePersisted()
            case _:
                raise AssertionError(action)
        phase_before = session.state.phase
        checker.feed(event, now, drain_after=False)
        if isinstance(action, Sleep) and phase_before is Phase.CONFIRM_WINDOW:
            assert deadline is not None
            if now >= deadline:
                assert session.state.phase is Phase.ROLLING_BACK


def test_checkin_adopts_the_closure_it_reported() -> None:
    """A switch that finished while the agent was down: the link says NEW, the
    reducer still thinks OLD. The CP decided on NEW, so the reducer must too."""
    checking_in = replace(booted(current=OLD), phase=Phase.CHECKING_IN)
    converged = wire.CheckinResponse(target=target(NEW))
    state, actions = step(
        checking_in, CheckinOk(response=converged, current_closure=NEW), NOW
    )
    assert state.current == NEW and state.previous == OLD
    assert not any(isinstance(a, Activate) for a in actions)
    # Without the observation the stale reducer would have activated NEW again.
    _, stale = step(checking_in, CheckinOk(response=converged), NOW)
    assert any(isinstance(a, FetchManifest) for a in stale)
