"""The agent's host reducer (lifecycle §2.3, §5) and the session that pumps it.

`step(state, event, now) -> (state, actions)` holds every decision the agent makes;
the legal moves are the `TRANSITIONS` table keyed by (phase, event type), and a
missing pair raises `IllegalTransition`. `AgentSession` adds the loop's bookkeeping
(action queue, poll schedule, checkin backoff) so a shell only pumps:

    while True:
        action = session.next_action()      # an action, or Sleep(until=…)
        event = perform(action)             # PollTick after a Sleep
        session.feed(event, clock.now())

Per-target path: Idle → Checkin → (rollback signal first) → converged? → fresh? →
manifest → deferred? → quarantined? → fetch → activate → confirm window → Idle;
failures leave through a rollback. Decisions the spec leaves open are marked
"Decision:" below.

The watchdog (decisions.md): the agent keeps its own confirm deadline, `received +
activate.confirmWindowSecs`, and rolls back locally once `deadline_passed(deadline,
now)` while it still has no 204: at the deadline, not a microsecond before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from .agent_actions import (
    Activate,
    AgentAction,
    Checkin,
    FetchClosure,
    FetchManifest,
    PersistState,
    Report,
    Rollback,
    SendConfirm,
    Sleep,
)
from .agent_events import (
    AgentEvent,
    Boot,
    CheckinFailed,
    CheckinOk,
    ConfirmAnswered,
    ConfirmFailed,
    DeferredPendingReboot,
    FetchDone,
    FetchFailed,
    FiredAndPolled,
    ManifestFailed,
    ManifestOk,
    PollTick,
    RealiseFailed,
    ReportFailed,
    ReportSent,
    RollbackDone,
    SignatureMismatch,
    SpawnFailed,
    StatePersisted,
    SwitchFailed,
    VerifyMismatch,
)
from .agent_state import (
    BUSY_PHASES,
    AgentState,
    LastConfirmed,
    LastDeferred,
    LastDispatched,
    LastFailedClosure,
    PendingTarget,
    PersistedState,
    Phase,
    RollbackPlan,
)
from .checkin import checkin_request, current_closure
from .closure import ClosureHash
from .deadline import deadline_passed
from .errors import BadInput, IllegalTransition
from .freshness import age_secs, is_target_stale
from .wire import (
    ACTIVATION_DEFERRED,
    ACTIVATION_FAILED,
    ACTIVATION_STARTED,
    CLOSURE_QUARANTINED,
    CLOSURE_SIGNATURE_MISMATCH,
    FETCH_CLOCK_SKEW,
    FETCH_FAILED,
    FETCH_OK,
    FETCH_VERIFY_FAILED,
    MANIFEST_MISMATCH,
    MANIFEST_MISSING,
    MANIFEST_VERIFY_FAILED,
    OTHER,
    REALISE_FAILED,
    ROLLBACK_TRIGGERED,
    STALE_TARGET,
    VERIFY_MISMATCH,
    ConfirmRequest,
    FetchOutcome,
    GenerationRef,
    RollbackSignal,
)

# Seed- and spec-quoted strings (tested byte for byte).
CP_410_REASON = "cp-410: rollout cancelled or deadline expired"
WATCHDOG_REASON = "watchdog: no confirm before deadline"
ACTIVATION_SPAWN_FAILED = "activation-spawn-failed"

# Prefixes of the follow-up `activation-failed` phase when a rollback fails
# (`<prefix>/<rollback phase>`). A switch failure uses its own phase as the prefix.
CP_410_PREFIX = "cp-410"
WATCHDOG_PREFIX = "watchdog"
CP_SIGNAL_PREFIX = "cp-rollback-signal"
VERIFY_MISMATCH_PHASE = "switch-poll-mismatch"

NO_ROLLBACK_SWITCH_PHASES = frozenset({"nix-env-set"})
"""Decision: `nix-env --set` failing leaves the profile untouched, so `nix-env
--rollback` would step one generation *below* the running system; no rollback."""

QUARANTINE_WINDOW = timedelta(hours=24)
QUARANTINE_REPOST = timedelta(hours=1)

HTTP_NO_CONTENT = 204
HTTP_GONE = 410

Step = tuple[AgentState, list[AgentAction]]


# --- the reducer ------------------------------------------------------------------


def step(state: AgentState, event: AgentEvent, now: datetime) -> Step:
    """Apply one event. Actions come in order; when the state dir changed, the first is
    `PersistState` (write-ahead: nothing acts before what it depends on is on disk)."""
    if now.tzinfo is None:
        raise BadInput("agent step: now (naive datetime; an aware UTC instant is required)")
    handler = TRANSITIONS.get((state.phase, type(event)))
    if handler is None:
        raise IllegalTransition(
            f"agent step: {type(event).__name__} in phase {state.phase.value} (no such transition)"
        )
    new, actions = handler(state, event, now)
    if new.persisted != state.persisted:
        actions = [PersistState(state=new.persisted), *actions]
    return new, actions


# --- helpers -----------------------------------------------------------------------


def _persist(state: AgentState, **changes: Any) -> AgentState:
    return replace(state, persisted=replace(state.persisted, **changes))


def _report(event: str, rollout: str | None, now: datetime, **details: Any) -> Report:
    return Report(
        event=event,
        rollout=rollout,
        details={k: v for k, v in details.items() if v is not None},
        occurred_at=now,
    )


def _is_waiting_for_reboot(state: AgentState, d: LastDispatched) -> bool:
    deferred = state.persisted.last_deferred
    return deferred is not None and deferred.closure_hash == d.closure_hash


def _idle(state: AgentState, now: datetime, actions: list[AgentAction] | None = None) -> Step:
    """Enter IDLE: drop a dispatch record the running system has left (unless it waits
    for a reboot), and check in at once if a poll tick is still owed one."""
    out = list(actions or [])
    state = replace(state, phase=Phase.IDLE, target=None, rollback=None, confirm_deadline=None)
    d = state.persisted.last_dispatched
    if d is not None and d.closure_hash != state.current and not _is_waiting_for_reboot(state, d):
        state = _persist(state, last_dispatched=None)
    if state.resume_checkin:
        state = replace(state, phase=Phase.CHECKING_IN, resume_checkin=False)
        out.append(Checkin(request=checkin_request(state, now)))
    return state, out


def _record_failure(
    state: AgentState, closure: ClosureHash, channel_ref: str | None, reason: str, now: datetime
) -> AgentState:
    """`last_failed_closure`: +1 for the same closure, else 1."""
    prior = state.persisted.last_failed_closure
    count = prior.failure_count + 1 if prior is not None and prior.closure_hash == closure else 1
    return _persist(
        state,
        last_failed_closure=LastFailedClosure(
            closure_hash=closure,
            channel_ref=channel_ref,
            failure_count=count,
            last_failure_at=now,
            reason=reason,
        ),
    )


def _rollback(state: AgentState, plan: RollbackPlan) -> Step:
    state = replace(
        state, phase=Phase.ROLLING_BACK, rollback=plan, target=None, confirm_deadline=None
    )
    return state, [Rollback(reason=plan.reason, rollout=plan.rollout)]


def _watchdog_rollback(state: AgentState) -> Step:
    d = state.persisted.last_dispatched
    rollout = d.channel_ref if d is not None else None
    return _rollback(
        state,
        RollbackPlan(
            prefix=WATCHDOG_PREFIX,
            reason=WATCHDOG_REASON,
            rollout=rollout,
            restores=state.previous,
            # Silence is not evidence against the closure: the CP or the link may be
            # down. Counting it would quarantine a good closure for 24 h after any
            # partition longer than the confirm window; the CP re-dispatches instead.
            record_failure=False,
        ),
    )


def _send_confirm(state: AgentState, now: datetime) -> Step:
    d = state.persisted.last_dispatched
    if d is None:  # pragma: no cover - callers guarantee a record
        raise IllegalTransition("agent step: confirm (no dispatch record)")
    request = ConfirmRequest(
        hostname=state.hostname,
        rollout=d.channel_ref,
        wave=d.target.wave_index or 0,
        generation=GenerationRef(
            closure_hash=current_closure(state), channel_ref=d.channel_ref, boot_id=state.boot_id
        ),
    )
    state = replace(state, phase=Phase.CONFIRMING)
    return state, [SendConfirm(request=request, endpoint=d.confirm_endpoint)]


def _recover(state: AgentState, now: datetime) -> Step:
    """Boot recovery (lifecycle §5.8), at start-up and on every idle poll tick.

    No record ⇒ nothing. The running system is not the recorded closure ⇒ drop the
    record (unless it waits for a reboot). It is ⇒ arm the watchdog and confirm, or
    roll back if the deadline has passed.
    """
    d = state.persisted.last_dispatched
    if d is None or d.closure_hash != current_closure(state):
        return _idle(state, now)
    deadline = d.confirm_deadline
    if deadline is None:
        # The deferred activation is running after its reboot: the window starts now.
        deadline = now + d.confirm_window
        state = _persist(state, last_dispatched=replace(d, confirm_deadline=deadline))
    state = replace(state, confirm_deadline=deadline)
    if deadline_passed(deadline, now):
        return _watchdog_rollback(state)
    return _send_confirm(state, now)


# --- handlers: boot and poll -----------------------------------------------------------


def _on_boot(state: AgentState, event: Boot, now: datetime) -> Step:
    state = replace(
        state,
        phase=Phase.IDLE,
        current=event.current_closure,
        boot_id=event.boot_id,
        resume_checkin=False,
    )
    return _recover(state, now)


def _on_idle_tick(state: AgentState, event: PollTick, now: datetime) -> Step:
    return _recover(replace(state, resume_checkin=True), now)


def _on_window_tick(state: AgentState, event: PollTick, now: datetime) -> Step:
    if state.confirm_deadline is None or deadline_passed(state.confirm_deadline, now):
        return _watchdog_rollback(state)
    return _send_confirm(state, now)


def _ignore(state: AgentState, event: object, now: datetime) -> Step:
    return state, []


# --- handlers: checkin and target processing ---------------------------------------------


def _on_checkin_failed(state: AgentState, event: CheckinFailed, now: datetime) -> Step:
    return _idle(replace(state, checkin_failures=state.checkin_failures + 1), now)


def _has_left_rollout(state: AgentState, signal: RollbackSignal) -> bool:
    """The agent knows which closure the signalled rollout installed and no longer runs
    it: rolling back again would step one generation too far (idempotent signal)."""
    target = state.persisted.last_target
    return (
        target is not None
        and target.rollout_id == signal.rollout
        and target.closure_hash != state.current
    )


def _on_checkin_ok(state: AgentState, event: CheckinOk, now: datetime) -> Step:
    state = replace(state, checkin_failures=0)
    observed = event.current_closure
    if observed is not None and observed != state.current:
        state = replace(state, current=observed, previous=state.current)
    response = event.response
    pending = (
        None if response.target is None else PendingTarget(target=response.target, received_at=now)
    )
    signal = response.rollback
    if signal is not None:
        # The CP signal is handled before any target in the same reply (lifecycle §2.3).
        if not _has_left_rollout(state, signal):
            return _rollback(
                state,
                RollbackPlan(
                    prefix=CP_SIGNAL_PREFIX,
                    reason=signal.reason,
                    rollout=signal.rollout,
                    restores=state.previous,
                    then_target=pending,
                ),
            )
        # Already rolled back: only repeat the report the CP is waiting for (H13).
        report = _report(ROLLBACK_TRIGGERED, signal.rollout, now, reason=signal.reason)
        state, actions = _process_target(state, pending, now)
        return state, [report, *actions]
    return _process_target(state, pending, now)


def _process_target(state: AgentState, pending: PendingTarget | None, now: datetime) -> Step:
    """Lifecycle §5.2 up to the manifest."""
    if pending is None:
        return _idle(state, now)
    t = pending.target
    if t.closure_hash == current_closure(state):
        # Converged: exact full-basename equality (seed 000 ghost loop). Never
        # activated again, nothing reported; the CP's H6 settles its side.
        return _idle(state, now)
    if is_target_stale(t.signed_at, now, t.freshness_window_secs):
        report = _report(
            STALE_TARGET,
            t.channel_ref,
            now,
            closure_hash=t.closure_hash,
            channel_ref=t.channel_ref,
            signed_at=t.signed_at_wire,
            freshness_window_secs=t.freshness_window_secs,
            age_secs=age_secs(t.signed_at, now),
        )
        return _idle(state, now, [report])
    state = replace(state, phase=Phase.FETCHING_MANIFEST, target=pending)
    return state, [FetchManifest(rollout_id=t.rollout_id, wave_index=t.wave_index or 0)]


def _pending(state: AgentState) -> PendingTarget:
    if state.target is None:  # pragma: no cover - the phase guarantees a target
        raise IllegalTransition(f"agent step: phase {state.phase.value} (no target)")
    return state.target


def _on_manifest_ok(state: AgentState, event: ManifestOk, now: datetime) -> Step:
    pending = _pending(state)
    t = pending.target
    state = _persist(
        state, last_fetch_outcome=FetchOutcome(result=FETCH_OK, rollout_id=t.rollout_id)
    )
    deferred = state.persisted.last_deferred
    if deferred is not None and deferred.closure_hash == t.closure_hash:
        return _idle(state, now)  # waiting for the reboot that runs it: silent
    failed = state.persisted.last_failed_closure
    if (
        failed is not None
        and failed.closure_hash == t.closure_hash
        and now - failed.last_failure_at <= QUARANTINE_WINDOW
    ):
        posted = failed.last_quarantine_post_at
        if posted is not None and now - posted < QUARANTINE_REPOST:
            return _idle(state, now)
        state = _persist(state, last_failed_closure=replace(failed, last_quarantine_post_at=now))
        report = _report(
            CLOSURE_QUARANTINED,
            t.channel_ref,
            now,
            closure_hash=t.closure_hash,
            channel_ref=t.channel_ref,
            failure_count=failed.failure_count,
            reason=failed.reason,
        )
        return _idle(state, now, [report])
    if t.activate is not None:
        window = timedelta(seconds=t.activate.confirm_window_secs)
        state = _persist(
            state,
            last_dispatched=LastDispatched(
                target=t,
                dispatched_at=pending.received_at,
                confirm_deadline=pending.received_at + window,
            ),
        )
    state = replace(state, phase=Phase.FETCHING)
    started = _report(
        ACTIVATION_STARTED,
        t.channel_ref,
        now,
        closure_hash=t.closure_hash,
        channel_ref=t.channel_ref,
    )
    return state, [started, FetchClosure(closure_hash=t.closure_hash)]


_MANIFEST_REPORTS: Mapping[str, tuple[str, str]] = {
    "missing": (MANIFEST_MISSING, FETCH_FAILED),
    "verify-failed": (MANIFEST_VERIFY_FAILED, FETCH_VERIFY_FAILED),
    "mismatch": (MANIFEST_MISMATCH, FETCH_VERIFY_FAILED),
    # Not `verify-failed`: the CP holds a host on that for the whole rollout, and a
    # host whose clock was slow would never be offered the target again once fixed.
    "clock-skew": (MANIFEST_VERIFY_FAILED, FETCH_CLOCK_SKEW),
}


def _on_manifest_failed(state: AgentState, event: ManifestFailed, now: datetime) -> Step:
    t = _pending(state).target
    kind, result = _MANIFEST_REPORTS[event.kind]
    state = _persist(
        state,
        last_fetch_outcome=FetchOutcome(result=result, rollout_id=t.rollout_id, error=event.reason),
    )
    report = _report(kind, t.channel_ref, now, rollout_id=t.rollout_id, reason=event.reason)
    return _idle(state, now, [report])


def _on_fetch_done(state: AgentState, event: FetchDone, now: datetime) -> Step:
    t = _pending(state).target
    return replace(state, phase=Phase.ACTIVATING), [Activate(closure_hash=t.closure_hash)]


def _on_fetch_failed(state: AgentState, event: FetchFailed, now: datetime) -> Step:
    t = _pending(state).target
    if event.signature_mismatch:
        report = _report(
            CLOSURE_SIGNATURE_MISMATCH,
            t.channel_ref,
            now,
            closure_hash=t.closure_hash,
            stderr_tail=event.stderr_tail or "",
        )
    else:
        report = _report(
            REALISE_FAILED, t.channel_ref, now, closure_hash=t.closure_hash, reason=event.reason
        )
    return _idle(state, now, [report])


# --- handlers: activation outcomes (lifecycle §5.4) ------------------------------------------


def _on_fired(state: AgentState, event: FiredAndPolled, now: datetime) -> Step:
    t = _pending(state).target
    state = replace(state, previous=state.current, current=t.closure_hash, target=None)
    d = state.persisted.last_dispatched
    if d is None or d.closure_hash != t.closure_hash:
        return _idle(state, now)  # no `activate`: nothing to confirm
    # Decision: one confirm is always attempted after a switch, even past the deadline:
    # a 204 (e.g. orphan recovery) wins; anything else then trips the watchdog.
    state = replace(state, confirm_deadline=d.confirm_deadline)
    return _send_confirm(state, now)


def _on_switch_failed(state: AgentState, event: SwitchFailed, now: datetime) -> Step:
    t = _pending(state).target
    state = _record_failure(state, t.closure_hash, t.channel_ref, event.phase, now)
    details = {
        "phase": event.phase,
        "exit_code": event.exit_code,
        "stderr_tail": event.stderr_tail,
    }
    details = {k: v for k, v in details.items() if v is not None}
    if event.phase in NO_ROLLBACK_SWITCH_PHASES:
        return _idle(state, now, [_report(ACTIVATION_FAILED, t.channel_ref, now, **details)])
    return _rollback(
        state,
        RollbackPlan(
            prefix=event.phase,
            reason=f"activation-failed: {event.phase}",
            rollout=t.channel_ref,
            restores=state.current,
            failure_event=ACTIVATION_FAILED,
            failure_details=details,
        ),
    )


def _on_verify_mismatch(state: AgentState, event: VerifyMismatch, now: datetime) -> Step:
    t = _pending(state).target
    before = state.current
    state = replace(state, previous=before, current=event.actual)
    state = _record_failure(state, t.closure_hash, t.channel_ref, VERIFY_MISMATCH_PHASE, now)
    return _rollback(
        state,
        RollbackPlan(
            prefix=VERIFY_MISMATCH_PHASE,
            reason=f"verify-mismatch: expected {event.expected}, got {event.actual}",
            rollout=t.channel_ref,
            restores=before,
            failure_event=VERIFY_MISMATCH,
            failure_details={"expected": event.expected, "actual": event.actual},
        ),
    )


def _on_deferred(state: AgentState, event: DeferredPendingReboot, now: datetime) -> Step:
    t = _pending(state).target
    state = _persist(
        state,
        last_deferred=LastDeferred(
            closure_hash=t.closure_hash,
            channel_ref=t.channel_ref,
            component=event.component,
            deferred_at=now,
        ),
    )
    d = state.persisted.last_dispatched
    if d is not None and d.closure_hash == t.closure_hash:
        # Decision: the record is kept until the reboot that runs the closure; the
        # watchdog is armed then (no countdown while nothing can be confirmed).
        state = _persist(state, last_dispatched=replace(d, confirm_deadline=None))
    report = _report(
        ACTIVATION_DEFERRED,
        t.channel_ref,
        now,
        closure_hash=t.closure_hash,
        channel_ref=t.channel_ref,
        component=event.component,
    )
    return _idle(state, now, [report])


def _on_realise_failed(state: AgentState, event: RealiseFailed, now: datetime) -> Step:
    t = _pending(state).target
    report = _report(
        REALISE_FAILED, t.channel_ref, now, closure_hash=t.closure_hash, reason=event.reason
    )
    return _idle(state, now, [report])


def _on_signature_mismatch(state: AgentState, event: SignatureMismatch, now: datetime) -> Step:
    t = _pending(state).target
    report = _report(
        CLOSURE_SIGNATURE_MISMATCH,
        t.channel_ref,
        now,
        closure_hash=t.closure_hash,
        stderr_tail=event.stderr_tail,
    )
    return _idle(state, now, [report])


def _on_spawn_failed(state: AgentState, event: SpawnFailed, now: datetime) -> Step:
    t = _pending(state).target
    report = _report(OTHER, t.channel_ref, now, kind=ACTIVATION_SPAWN_FAILED, detail=event.detail)
    return _idle(state, now, [report])


# --- handlers: confirm and rollback ---------------------------------------------------------


def _on_confirm_answered(state: AgentState, event: ConfirmAnswered, now: datetime) -> Step:
    d = state.persisted.last_dispatched
    if event.status == HTTP_NO_CONTENT and d is not None:
        state = _persist(
            state,
            last_confirmed_at=LastConfirmed(closure_hash=current_closure(state), confirmed_at=now),
            last_target=d.target,
            last_dispatched=None,
            last_deferred=None,
        )
        return _idle(state, now)
    if event.status == HTTP_GONE and d is not None:
        return _rollback(
            state,
            RollbackPlan(
                prefix=CP_410_PREFIX,
                reason=CP_410_REASON,
                rollout=d.channel_ref,
                restores=state.previous,
            ),
        )
    return _confirm_not_yet(state, now)


def _confirm_not_yet(state: AgentState, now: datetime) -> Step:
    """No 204 yet: wait for the next retry, unless the watchdog deadline has come."""
    if state.confirm_deadline is None or deadline_passed(state.confirm_deadline, now):
        return _watchdog_rollback(state)
    return replace(state, phase=Phase.CONFIRM_WINDOW, resume_checkin=False), []


def _on_confirm_failed(state: AgentState, event: ConfirmFailed, now: datetime) -> Step:
    return _confirm_not_yet(state, now)


def _on_rollback_done(state: AgentState, event: RollbackDone, now: datetime) -> Step:
    plan = state.rollback
    if plan is None:  # pragma: no cover - the phase guarantees a plan
        raise IllegalTransition("agent step: RollbackDone (no rollback in flight)")
    reports: list[AgentAction] = []
    if plan.failure_event is not None:
        reports.append(_report(plan.failure_event, plan.rollout, now, **plan.failure_details))
    left = state.current
    if event.ok:
        current = event.current_closure or plan.restores or state.current
        if plan.record_failure and left is not None:
            state = _record_failure(state, left, plan.rollout, plan.reason, now)
        d = state.persisted.last_dispatched
        if d is not None and d.closure_hash == left:
            # Rolled back from the recorded closure: the record is done with, even if
            # the shell could not say what runs now (never roll back from it twice).
            state = _persist(state, last_dispatched=None)
        state = replace(
            state, current=current, previous=left if current != left else state.previous
        )
        reports.append(_report(ROLLBACK_TRIGGERED, plan.rollout, now, reason=plan.reason))
    else:
        if event.current_closure is not None:
            state = replace(state, current=event.current_closure)
        reports.append(
            _report(
                ACTIVATION_FAILED,
                plan.rollout,
                now,
                phase=f"{plan.prefix}/{event.phase or 'unknown'}",
                exit_code=event.exit_code,
                stderr_tail=event.stderr_tail,
            )
        )
    state = replace(state, rollback=None)
    if event.ok and plan.then_target is not None:
        state, more = _process_target(state, plan.then_target, now)
        return state, [*reports, *more]
    return _idle(state, now, reports)


# --- the table -------------------------------------------------------------------------------

Handler = Callable[[AgentState, Any, datetime], Step]

_ALWAYS: tuple[type, ...] = (ReportSent, ReportFailed, StatePersisted)
_ACTIVATION: Mapping[type, Handler] = {
    FiredAndPolled: _on_fired,
    SwitchFailed: _on_switch_failed,
    VerifyMismatch: _on_verify_mismatch,
    DeferredPendingReboot: _on_deferred,
    RealiseFailed: _on_realise_failed,
    SignatureMismatch: _on_signature_mismatch,
    SpawnFailed: _on_spawn_failed,
}


def _table() -> dict[tuple[Phase, type], Handler]:
    table: dict[tuple[Phase, type], Handler] = {
        (Phase.START, Boot): _on_boot,
        (Phase.IDLE, PollTick): _on_idle_tick,
        (Phase.CHECKING_IN, CheckinOk): _on_checkin_ok,
        (Phase.CHECKING_IN, CheckinFailed): _on_checkin_failed,
        (Phase.FETCHING_MANIFEST, ManifestOk): _on_manifest_ok,
        (Phase.FETCHING_MANIFEST, ManifestFailed): _on_manifest_failed,
        (Phase.FETCHING, FetchDone): _on_fetch_done,
        (Phase.FETCHING, FetchFailed): _on_fetch_failed,
        (Phase.CONFIRMING, ConfirmAnswered): _on_confirm_answered,
        (Phase.CONFIRMING, ConfirmFailed): _on_confirm_failed,
        (Phase.CONFIRM_WINDOW, PollTick): _on_window_tick,
        (Phase.ROLLING_BACK, RollbackDone): _on_rollback_done,
    }
    for outcome, handler in _ACTIVATION.items():
        table[(Phase.ACTIVATING, outcome)] = handler
    for phase in Phase:
        for kind in _ALWAYS:
            table[(phase, kind)] = _ignore
    # A timer may fire while an action is in flight (an async shell); it is a no-op
    # there: the in-flight action's result drives what comes next.
    for phase in BUSY_PHASES:
        table[(phase, PollTick)] = _ignore
    return table


TRANSITIONS: Mapping[tuple[Phase, type], Handler] = _table()
"""Every legal (phase, event type); `step` raises IllegalTransition on any other."""


# --- the session ---------------------------------------------------------------------------

DEFAULT_POLL_INTERVAL_SECS = 60.0
DEFAULT_CONFIRM_RETRY_SECS = 10.0
MAX_BACKOFF_EXPONENT = 3
CONFIRM_RETRY_SHARE = 4
"""A confirm retry waits at most 1/4 of the time left to the watchdog deadline, so at
least 3 more tries fit in whatever remains of any window."""
MIN_CONFIRM_RETRY = timedelta(seconds=0.5)
MIN_CONFIRM_WINDOW_SECS = 30
"""The shortest confirm window a CP may hand out: the agent must fetch and switch the
closure inside it and still retry its confirm at least 3 times (through a CP restart)."""


def confirm_retry_delay(deadline: datetime | None, now: datetime, cap_secs: float) -> timedelta:
    """How long to wait before retrying a confirm that got no 204: `cap_secs`, or a
    quarter of the time left to `deadline` when that is shorter, but never under 0.5 s.
    A fixed 10 s let one failed confirm in a 10 s window trip the watchdog."""
    cap = timedelta(seconds=cap_secs)
    if deadline is None:
        return cap
    return max(MIN_CONFIRM_RETRY, min(cap, (deadline - now) / CONFIRM_RETRY_SHARE))


def checkin_backoff(poll_interval_secs: float, failures: int, jitter: float) -> timedelta:
    """`poll × 2^min(failures, 3) × jitter` (lifecycle §5.1; jitter is ±20 % there);
    `failures` counts the consecutive failed checkins before the one just failed."""
    return timedelta(
        seconds=poll_interval_secs * 2 ** min(max(failures, 0), MAX_BACKOFF_EXPONENT) * jitter
    )


def _no_jitter() -> float:
    return 1.0


class AgentSession:
    """The reducer plus the loop's bookkeeping (h11's `Connection`, for the agent).

    `feed(event, now)` steps the reducer and queues its actions; `next_action()` pops
    the next one, or returns `Sleep(until=min(next poll, watchdog deadline))`. The
    checkin backoff draws its factor from `jitter` (e.g. `lambda: rng.uniform(0.8,
    1.2)` with a seeded `random.Random`); the core never draws randomness itself.
    """

    def __init__(
        self,
        state: AgentState,
        *,
        poll_interval_secs: float = DEFAULT_POLL_INTERVAL_SECS,
        confirm_retry_secs: float = DEFAULT_CONFIRM_RETRY_SECS,
        jitter: Callable[[], float] = _no_jitter,
    ) -> None:
        if poll_interval_secs <= 0 or confirm_retry_secs <= 0:
            raise BadInput("agent session: intervals (must be positive)")
        self._state = state
        self._poll = poll_interval_secs
        # Never slower than a poll: seed 001 wants every agent back within 2 polls of a
        # CP restart, also one whose confirm failed while the CP was down.
        self._confirm_retry = min(confirm_retry_secs, poll_interval_secs)
        self._jitter = jitter
        self._queue: deque[AgentAction] = deque()
        self._next_poll_at: datetime | None = None

    @property
    def state(self) -> AgentState:
        return self._state

    @property
    def next_poll_at(self) -> datetime | None:
        return self._next_poll_at

    @property
    def pending(self) -> tuple[AgentAction, ...]:
        """Queued actions, in order (not yet returned by `next_action`)."""
        return tuple(self._queue)

    def feed(self, event: AgentEvent, now: datetime) -> None:
        """Step the reducer. A PollTick before anything is due (an early wake) is
        dropped. On IllegalTransition the state and queue are left as they were."""
        if isinstance(event, PollTick) and not self._is_tick_due(now):
            return
        new, actions = step(self._state, event, now)
        next_poll_at = self._schedule(event, new, now)
        self._state = new
        self._next_poll_at = next_poll_at
        self._queue.extend(actions)

    def next_action(self) -> AgentAction:
        if self._queue:
            return self._queue.popleft()
        wakes = [t for t in (self._next_poll_at, self._watchdog_deadline()) if t is not None]
        if not wakes:
            raise IllegalTransition("agent session: next_action (feed Boot first)")
        return Sleep(until=min(wakes))

    def _watchdog_deadline(self) -> datetime | None:
        if self._state.phase is Phase.CONFIRM_WINDOW:
            return self._state.confirm_deadline
        return None

    def _is_tick_due(self, now: datetime) -> bool:
        if self._state.phase not in (Phase.IDLE, Phase.CONFIRM_WINDOW):
            return True  # the reducer decides (a no-op while busy, illegal before Boot)
        if self._next_poll_at is not None and deadline_passed(self._next_poll_at, now):
            return True
        deadline = self._watchdog_deadline()
        return deadline is not None and deadline_passed(deadline, now)

    def _schedule(self, event: AgentEvent, new: AgentState, now: datetime) -> datetime | None:
        """The next poll (or confirm retry) after `event` led to `new`."""
        if isinstance(event, Boot):
            return now
        if isinstance(event, CheckinOk):
            return now + timedelta(seconds=self._poll)
        if isinstance(event, CheckinFailed):
            factor = self._jitter()
            if not factor > 0:
                raise BadInput(f"agent session: jitter factor {factor!r} (must be positive)")
            # The exponent counts the failures before this one: the first failed
            # checkin retries after one poll, so agents are back within 70–120 s of
            # a CP restart (seed 001), and repeated failures back off from there.
            return now + checkin_backoff(self._poll, new.checkin_failures - 1, factor)
        if isinstance(event, ConfirmAnswered | ConfirmFailed) and (
            new.phase is Phase.CONFIRM_WINDOW
        ):
            return now + confirm_retry_delay(new.confirm_deadline, now, self._confirm_retry)
        return self._next_poll_at


__all__ = [
    "ACTIVATION_SPAWN_FAILED",
    "BUSY_PHASES",
    "CP_410_PREFIX",
    "CP_410_REASON",
    "CP_SIGNAL_PREFIX",
    "MIN_CONFIRM_WINDOW_SECS",
    "NO_ROLLBACK_SWITCH_PHASES",
    "QUARANTINE_REPOST",
    "QUARANTINE_WINDOW",
    "TRANSITIONS",
    "VERIFY_MISMATCH_PHASE",
    "WATCHDOG_PREFIX",
    "WATCHDOG_REASON",
    "Activate",
    "AgentAction",
    "AgentEvent",
    "AgentSession",
    "AgentState",
    "Boot",
    "Checkin",
    "CheckinFailed",
    "CheckinOk",
    "ConfirmAnswered",
    "ConfirmFailed",
    "DeferredPendingReboot",
    "FetchClosure",
    "FetchDone",
    "FetchFailed",
    "FetchManifest",
    "FiredAndPolled",
    "LastConfirmed",
    "LastDeferred",
    "LastDispatched",
    "LastFailedClosure",
    "ManifestFailed",
    "ManifestOk",
    "PendingTarget",
    "PersistState",
    "PersistedState",
    "Phase",
    "PollTick",
    "RealiseFailed",
    "Report",
    "ReportFailed",
    "ReportSent",
    "Rollback",
    "RollbackDone",
    "RollbackPlan",
    "SendConfirm",
    "SignatureMismatch",
    "Sleep",
    "SpawnFailed",
    "StatePersisted",
    "SwitchFailed",
    "VerifyMismatch",
    "checkin_backoff",
    "checkin_request",
    "confirm_retry_delay",
    "step",
]
