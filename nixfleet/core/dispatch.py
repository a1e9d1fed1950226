"""The CP's per-checkin decisions (lifecycle §4): what one checkin or confirm leads to.

The CP service loads rows, calls these functions and writes what they say in one
transaction; the simulator drives the same service. Inputs are plain records so the
decisions stay pure: the gate verdict comes from `gates.py` through a callable.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from .deadline import deadline_passed
from .fleet import ROLLBACK_AND_HALT
from .rollout_state import FAILED, REVERTED
from .wire import FETCH_VERIFY_FAILED, FetchOutcome, RollbackSignal

DEFAULT_CONFIRM_WINDOW = timedelta(seconds=360)

# Op-row (`pending_confirms.state`) literals.
PENDING = "pending"
CONFIRMED = "confirmed"
ROLLED_BACK = "rolled-back"
CANCELLED = "cancelled"
DEFERRED = "deferred-pending-reboot"
OP_STATES = (PENDING, CONFIRMED, ROLLED_BACK, CANCELLED, DEFERRED)

HOLDING_FETCH_FAILURES = (FETCH_VERIFY_FAILED,)
"""Fetch outcomes that hold a host's dispatch of the same rollout (lifecycle §4.3 #6).

Only `verify-failed`: the same manifest bytes fail the same way again. A
`fetch-failed` (CP, cache or link down) is transient; holding on it deadlocked a host
whose target arrived just before a CP wipe — the agent kept reporting the failure,
the CP held, and with no dispatch row left nothing ever expired (found by the
simulator). The reference only escapes this because its agent stops sending the
outcome without a pending generation."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OpRow:
    """The host's newest `pending_confirms` row: its current dispatch."""

    rollout_id: str
    target_closure_hash: str
    state: str
    confirm_deadline: datetime
    wave: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckinFacts:
    """What the checkin says about the host (already CN-checked)."""

    hostname: str
    current_closure: str
    """Full store basename of the running system."""
    last_fetch_outcome: FetchOutcome | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPlan:
    """What the verified fleet and the rollout tables say about this host."""

    declared: bool
    """The host is in the verified fleet."""
    closure_hash: str | None
    """Declared closure: full store basename."""
    rollout_id: str | None
    """Rollout id projected for the host's channel, None when not projectable."""
    wave_index: int | None
    current_wave: int = 0
    rollout_halted: bool = False
    participation: str | None = None
    """host_rollout_state.host_state for (rollout_id, host), None when no row."""


# --- decisions ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NoTarget:
    """No target in the reply. `reason` is logged; `record_converged` asks the CP to
    write the converged-at-dispatch rows (H10)."""

    reason: str
    record_converged: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Dispatch:
    """Write a new `pending` row and send the target (H1)."""

    rollout_id: str
    closure_hash: str
    wave_index: int | None
    confirm_deadline: datetime
    reoffer: bool = False
    """The host's pending row's target again: no new row, the row's own deadline."""


MIN_REOFFER_WINDOW = timedelta(seconds=15)
"""A pending target is sent again only with at least this much of its window left;
closer to the deadline the row expires (H5) and the next checkin dispatches anew."""


def _reofferable(op_row: OpRow | None, plan: HostPlan) -> bool:
    """A pending row for exactly what the host should run now (the rollout and closure
    the verified fleet declares) may be offered again to a host that lost it."""
    return (
        op_row is not None
        and op_row.rollout_id == plan.rollout_id
        and op_row.target_closure_hash == plan.closure_hash
    )


CheckinDecision = NoTarget | Dispatch

UNMANAGED = "unmanaged"
NO_DECLARATION = "no-declaration"
CONVERGED = "converged"
IN_FLIGHT = "in-flight"
HOLD_AFTER_FAILURE = "hold-after-failure"
WAVE_NOT_REACHED = "wave-not-reached"
ROLLOUT_HALTED = "rollout-halted"
FAILED_IN_ROLLOUT = "failed-in-rollout"
DEFERRED_NO_REISSUE = "deferred-pending-reboot"


def decide_checkin(
    facts: CheckinFacts,
    plan: HostPlan,
    op_row: OpRow | None,
    gate_block: Callable[[], str | None],
    now: datetime,
    confirm_window: timedelta = DEFAULT_CONFIRM_WINDOW,
) -> CheckinDecision:
    """The gate pre-check of lifecycle §4.2, then the dispatch ladder of §4.3.

    `gate_block` is asked only when its verdict changes what happens: a closed gate
    turns a dispatch or a converged-at-dispatch record into a plain hold, while every
    other step of the ladder already answers "no target, nothing written". Skipping the
    gates there saves projecting the whole fleet on most checkins.
    """
    if not plan.declared:
        return NoTarget(reason=UNMANAGED)
    decision = _ladder(facts, plan, op_row, now, confirm_window)
    # A re-offer is the dispatch the gates let through already, not a new one.
    if (isinstance(decision, Dispatch) and not decision.reoffer) or (
        isinstance(decision, NoTarget) and decision.record_converged
    ):
        block = gate_block()
        if block is not None:
            return NoTarget(reason=f"held by fleet-level gate: {block}")
    return decision


def _ladder(
    facts: CheckinFacts,
    plan: HostPlan,
    op_row: OpRow | None,
    now: datetime,
    confirm_window: timedelta,
) -> CheckinDecision:
    if plan.closure_hash is None:
        return NoTarget(reason=NO_DECLARATION)
    if facts.current_closure == plan.closure_hash:
        return NoTarget(reason=CONVERGED, record_converged=plan.participation is None)
    pending = op_row is not None and op_row.state == PENDING
    if pending and not _reofferable(op_row, plan):
        return NoTarget(reason=IN_FLIGHT)
    if plan.rollout_id is None:
        return NoTarget(reason=NO_DECLARATION)
    if plan.rollout_halted:
        return NoTarget(reason=ROLLOUT_HALTED if not pending else IN_FLIGHT)
    if plan.participation in (FAILED, REVERTED):
        # The same target failed here already: re-sending it would loop dispatch →
        # failure → rollback (scenario quarantine-gate-split-brain).
        return NoTarget(reason=FAILED_IN_ROLLOUT)
    outcome = facts.last_fetch_outcome
    if (
        outcome is not None
        and outcome.result in HOLDING_FETCH_FAILURES
        and outcome.rollout_id in (None, plan.rollout_id)
    ):
        return NoTarget(reason=HOLD_AFTER_FAILURE)
    if pending and op_row is not None:
        remaining = op_row.confirm_deadline - now
        if remaining < MIN_REOFFER_WINDOW:
            return NoTarget(reason=IN_FLIGHT)
        # The host checks in idle, still on its old closure, while its dispatch is
        # pending: it lost the target (killed after receiving it, before switching).
        # The same row's target again, with what is left of its window.
        return Dispatch(
            rollout_id=op_row.rollout_id,
            closure_hash=op_row.target_closure_hash,
            wave_index=plan.wave_index,
            confirm_deadline=op_row.confirm_deadline,
            reoffer=True,
        )
    if (plan.wave_index or 0) > plan.current_wave:
        return NoTarget(reason=WAVE_NOT_REACHED)
    if (
        op_row is not None
        and op_row.state == DEFERRED
        and op_row.target_closure_hash == plan.closure_hash
    ):
        return NoTarget(reason=DEFERRED_NO_REISSUE)
    return Dispatch(
        rollout_id=plan.rollout_id,
        closure_hash=plan.closure_hash,
        wave_index=plan.wave_index,
        confirm_deadline=now + confirm_window,
    )


def revives_lost_confirm(facts: CheckinFacts, plan: HostPlan, op_row: OpRow | None) -> bool:
    """H6: a `pending`/`rolled-back` row whose host now runs the declared closure
    under the current rollout is confirmed after all (the reply was lost)."""
    return (
        op_row is not None
        and op_row.state in (PENDING, ROLLED_BACK)
        and plan.closure_hash is not None
        and facts.current_closure == plan.closure_hash
        and plan.rollout_id == op_row.rollout_id
    )


def resets_soak(facts: CheckinFacts, op_row: OpRow | None, healthy: bool) -> bool:
    """H14: a confirmed, Healthy host reporting another closure restarts its soak."""
    return (
        healthy
        and op_row is not None
        and op_row.state == CONFIRMED
        and op_row.target_closure_hash != facts.current_closure
    )


# --- confirm --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfirmFacts:
    hostname: str
    rollout_id: str
    closure_hash: str
    wave: int = 0


class ConfirmVerdict(enum.Enum):
    """What a confirm leads to. The HTTP layer picks the status for each."""

    ACCEPT = "accept"
    """H2: the matching pending (or deferred) row is confirmed → 204."""
    ALREADY_CONFIRMED = "already-confirmed"
    """The same confirm again (its 204 was lost): nothing written → 204."""
    ORPHAN = "orphan-recovered"
    """H3: no row for the rollout, but the confirm names the declared target → 204."""
    MISMATCH = "mismatch"
    """The row for the rollout names another closure or wave: a confirm for something
    never dispatched. Nothing written → 409; the agent retries or its watchdog fires."""
    EXPIRED = "expired"
    """The matching row's window has passed (or it ended): → 410, a pending row becomes
    `rolled-back` at once, before the sweep runs."""
    REJECT = "reject"
    """H4: no row and no recoverable orphan → 410, the agent rolls back."""


def decide_confirm(
    confirm: ConfirmFacts, row: OpRow | None, plan: HostPlan, now: datetime
) -> ConfirmVerdict:
    """Confirm guard (H2), then orphan recovery (§4.5), else 410 (H4).

    `row` is the host's row for `confirm.rollout_id` (None when there is none).
    Stricter than the reference (docs/hardening.md): a confirm must name exactly the
    closure and wave its row dispatched, and orphan recovery applies only when no row
    exists, to exactly the declared target (closure, rollout and wave).
    """
    if row is not None:
        if row.target_closure_hash != confirm.closure_hash or row.wave != confirm.wave:
            return ConfirmVerdict.MISMATCH
        if row.state == DEFERRED or (
            row.state == PENDING and not deadline_passed(row.confirm_deadline, now)
        ):
            return ConfirmVerdict.ACCEPT
        if row.state == CONFIRMED:
            return ConfirmVerdict.ALREADY_CONFIRMED
        return ConfirmVerdict.EXPIRED
    if (
        plan.closure_hash is not None
        and plan.closure_hash == confirm.closure_hash
        and plan.rollout_id == confirm.rollout_id
        and (plan.wave_index or 0) == confirm.wave
    ):
        return ConfirmVerdict.ORPHAN
    return ConfirmVerdict.REJECT


def confirm_mismatch(confirm: ConfirmFacts, row: OpRow) -> str:
    """The one-line reason of a MISMATCH verdict."""
    if row.target_closure_hash != confirm.closure_hash:
        return (
            f"confirm names closure {confirm.closure_hash}, but rollout {row.rollout_id} "
            f"dispatched {row.target_closure_hash} to {confirm.hostname}"
        )
    return (
        f"confirm names wave {confirm.wave}, but rollout {row.rollout_id} dispatched "
        f"wave {row.wave} to {confirm.hostname}"
    )


# --- attestation and rollback signal ---------------------------------------------


def accepts_attestation(
    facts: CheckinFacts,
    plan: HostPlan,
    last_confirmed_at: datetime | None,
    signature_ok: Callable[[], bool],
) -> bool:
    """H15 (§4.6): a signed `lastConfirmedAt` for the declared closure restores
    Healthy after a CP wipe, when no participation row exists yet. `signature_ok` is
    asked last: it verifies a signature, and a confirmed host sends its attestation
    with every checkin although only the first checkin after a wipe needs it."""
    return (
        last_confirmed_at is not None
        and plan.closure_hash is not None
        and facts.current_closure == plan.closure_hash
        and plan.rollout_id is not None
        and plan.participation is None
        and signature_ok()
    )


def healthy_since(last_confirmed_at: datetime, now: datetime) -> datetime:
    """An attested instant is clamped to now: a host cannot claim a future soak."""
    return min(now, last_confirmed_at)


def rollback_signal(
    hostname: str, rollout_id: str, target_ref: str, participation: str | None, policy: str | None
) -> RollbackSignal | None:
    """H12: tell a Failed host to roll back while its policy is rollback-and-halt."""
    if participation != FAILED or policy != ROLLBACK_AND_HALT:
        return None
    return RollbackSignal(
        rollout=rollout_id,
        target_ref=target_ref,
        reason=f"policy: rollback-and-halt; host {hostname} is Failed",
    )
