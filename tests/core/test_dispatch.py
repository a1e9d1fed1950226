"""The CP's per-checkin ladder, confirm guard, orphan recovery and attestation."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from nixfleet.core import dispatch as d
from nixfleet.core.wire import FetchOutcome, RollbackSignal

NOW = datetime(2026, 4, 24, 10, 0, tzinfo=UTC)
DECLARED = "0" * 32 + "-nixos-system-h1-26.05"
OLD = "1" * 32 + "-nixos-system-h1-26.04"
RID = "a" * 64


def NO_GATE() -> str | None:
    return None


FACTS = d.CheckinFacts(hostname="h1", current_closure=OLD)
PLAN = d.HostPlan(declared=True, closure_hash=DECLARED, rollout_id=RID, wave_index=0)


def row(
    state: str,
    *,
    deadline: datetime = NOW + timedelta(seconds=60),
    rid: str = RID,
    closure: str = DECLARED,
) -> d.OpRow:
    return d.OpRow(
        rollout_id=rid, target_closure_hash=closure, state=state, confirm_deadline=deadline
    )


@pytest.mark.parametrize(
    ("facts", "plan", "op", "gate", "expected"),
    [
        (FACTS, replace(PLAN, declared=False), None, None, d.NoTarget(reason=d.UNMANAGED)),
        (
            FACTS,
            PLAN,
            None,
            "quarantine: x",
            d.NoTarget(reason="held by fleet-level gate: quarantine: x"),
        ),
        (FACTS, replace(PLAN, closure_hash=None), None, None, d.NoTarget(reason=d.NO_DECLARATION)),
        (
            replace(FACTS, current_closure=DECLARED),
            PLAN,
            None,
            None,
            d.NoTarget(reason=d.CONVERGED, record_converged=True),
        ),
        (
            replace(FACTS, current_closure=DECLARED),
            replace(PLAN, participation="Healthy"),
            None,
            None,
            d.NoTarget(reason=d.CONVERGED, record_converged=False),
        ),
        (FACTS, PLAN, row(d.PENDING, rid="b" * 64), None, d.NoTarget(reason=d.IN_FLIGHT)),
        (FACTS, replace(PLAN, rollout_id=None), None, None, d.NoTarget(reason=d.NO_DECLARATION)),
        (
            FACTS,
            replace(PLAN, rollout_halted=True),
            None,
            None,
            d.NoTarget(reason=d.ROLLOUT_HALTED),
        ),
        (
            FACTS,
            replace(PLAN, participation="Failed"),
            None,
            None,
            d.NoTarget(reason=d.FAILED_IN_ROLLOUT),
        ),
        (
            FACTS,
            replace(PLAN, participation="Reverted"),
            None,
            None,
            d.NoTarget(reason=d.FAILED_IN_ROLLOUT),
        ),
        (
            replace(FACTS, last_fetch_outcome=FetchOutcome(result="verify-failed", rollout_id=RID)),
            PLAN,
            None,
            None,
            d.NoTarget(reason=d.HOLD_AFTER_FAILURE),
        ),
        (
            FACTS,
            replace(PLAN, wave_index=2, current_wave=1),
            None,
            None,
            d.NoTarget(reason=d.WAVE_NOT_REACHED),
        ),
        (FACTS, PLAN, row(d.DEFERRED), None, d.NoTarget(reason=d.DEFERRED_NO_REISSUE)),
    ],
    ids=[
        "unmanaged",
        "gate",
        "no-declaration",
        "converged-at-dispatch",
        "converged-known",
        "in-flight",
        "not-projectable",
        "halted",
        "failed-here",
        "reverted-here",
        "hold-verify-failed",
        "wave-not-reached",
        "deferred-same-closure",
    ],
)
def test_ladder_holds(
    facts: d.CheckinFacts,
    plan: d.HostPlan,
    op: d.OpRow | None,
    gate: str | None,
    expected: d.NoTarget,
) -> None:
    assert d.decide_checkin(facts, plan, op, lambda: gate, NOW) == expected


def test_dispatch_sets_deadline_from_window() -> None:
    assert d.decide_checkin(FACTS, PLAN, None, NO_GATE, NOW) == d.Dispatch(
        rollout_id=RID,
        closure_hash=DECLARED,
        wave_index=0,
        confirm_deadline=NOW + timedelta(seconds=360),
    )


@pytest.mark.parametrize("state", [d.CONFIRMED, d.ROLLED_BACK, d.CANCELLED])
def test_finished_rows_do_not_block_a_new_dispatch(state: str) -> None:
    assert isinstance(
        d.decide_checkin(FACTS, PLAN, row(state, closure=OLD), NO_GATE, NOW), d.Dispatch
    )


def test_fetch_failure_for_another_rollout_does_not_hold() -> None:
    facts = replace(
        FACTS, last_fetch_outcome=FetchOutcome(result="fetch-failed", rollout_id="b" * 64)
    )
    assert isinstance(d.decide_checkin(facts, PLAN, None, NO_GATE, NOW), d.Dispatch)


def test_deferred_row_for_another_closure_falls_through() -> None:
    assert isinstance(
        d.decide_checkin(FACTS, PLAN, row(d.DEFERRED, closure=OLD), NO_GATE, NOW), d.Dispatch
    )


def test_ghost_loop_truncated_report_would_dispatch_every_time() -> None:
    """A report cut to the 32-char hash never equals the declared basename."""
    truncated = replace(FACTS, current_closure=DECLARED.split("-", 1)[0])
    assert isinstance(d.decide_checkin(truncated, PLAN, None, NO_GATE, NOW), d.Dispatch)
    full = replace(FACTS, current_closure=DECLARED)
    for _ in range(5):
        assert isinstance(d.decide_checkin(full, PLAN, None, NO_GATE, NOW), d.NoTarget)


CONFIRM = d.ConfirmFacts(hostname="h1", rollout_id=RID, closure_hash=DECLARED)


V = d.ConfirmVerdict


@pytest.mark.parametrize(
    ("op", "plan", "confirm", "expected"),
    [
        (row(d.PENDING), PLAN, CONFIRM, V.ACCEPT),
        (row(d.DEFERRED, deadline=NOW - timedelta(hours=1)), PLAN, CONFIRM, V.ACCEPT),
        (row(d.PENDING, deadline=NOW), PLAN, CONFIRM, V.EXPIRED),
        (row(d.PENDING, deadline=NOW - timedelta(seconds=1)), PLAN, CONFIRM, V.EXPIRED),
        (row(d.CONFIRMED), PLAN, CONFIRM, V.ALREADY_CONFIRMED),
        (row(d.ROLLED_BACK), PLAN, CONFIRM, V.EXPIRED),
        (row(d.CANCELLED), PLAN, CONFIRM, V.EXPIRED),
        (None, PLAN, CONFIRM, V.ORPHAN),
        (None, replace(PLAN, rollout_id="b" * 64), CONFIRM, V.REJECT),
        (None, replace(PLAN, closure_hash=OLD), CONFIRM, V.REJECT),
        (None, replace(PLAN, wave_index=1), CONFIRM, V.REJECT),
        (row(d.PENDING), PLAN, replace(CONFIRM, closure_hash=OLD), V.MISMATCH),
        (row(d.PENDING), PLAN, replace(CONFIRM, closure_hash="anything"), V.MISMATCH),
        (row(d.PENDING), PLAN, replace(CONFIRM, wave=-1), V.MISMATCH),
        (row(d.PENDING), PLAN, replace(CONFIRM, wave=7), V.MISMATCH),
        (row(d.PENDING), PLAN, replace(CONFIRM, wave=10**400), V.MISMATCH),
        (row(d.CONFIRMED), PLAN, replace(CONFIRM, closure_hash=OLD), V.MISMATCH),
    ],
    ids=[
        "pending-in-time",
        "deferred",
        "at-deadline-expired",
        "late-expired-even-if-declared",
        "repeated-confirm",
        "rolled-back-410",
        "cancelled-410",
        "no-row-orphan",
        "other-rollout-410",
        "other-closure-410",
        "orphan-other-wave-410",
        "closure-never-dispatched",
        "closure-garbage",
        "wave-negative",
        "wave-other",
        "wave-huge",
        "confirmed-row-other-closure",
    ],
)
def test_confirm(
    op: d.OpRow | None, plan: d.HostPlan, confirm: d.ConfirmFacts, expected: d.ConfirmVerdict
) -> None:
    assert d.decide_confirm(confirm, op, plan, NOW) is expected


def test_mismatch_reason_names_both_closures() -> None:
    bad = replace(CONFIRM, closure_hash=OLD)
    reason = d.confirm_mismatch(bad, row(d.PENDING))
    assert OLD in reason and DECLARED in reason and "h1" in reason


def test_revive_lost_confirm() -> None:
    on_target = replace(FACTS, current_closure=DECLARED)
    assert d.revives_lost_confirm(on_target, PLAN, row(d.PENDING))
    assert d.revives_lost_confirm(on_target, PLAN, row(d.ROLLED_BACK))
    assert not d.revives_lost_confirm(on_target, PLAN, row(d.CONFIRMED))
    assert not d.revives_lost_confirm(FACTS, PLAN, row(d.PENDING))
    assert not d.revives_lost_confirm(on_target, PLAN, row(d.PENDING, rid="b" * 64))


def test_soak_resets_when_host_leaves_its_confirmed_closure() -> None:
    assert d.resets_soak(FACTS, row(d.CONFIRMED), healthy=True)
    assert not d.resets_soak(replace(FACTS, current_closure=DECLARED), row(d.CONFIRMED), True)
    assert not d.resets_soak(FACTS, row(d.CONFIRMED), healthy=False)


def test_attestation() -> None:
    on_target = replace(FACTS, current_closure=DECLARED)
    at = NOW - timedelta(minutes=30)
    yes, no = (lambda: True), (lambda: False)
    assert d.accepts_attestation(on_target, PLAN, at, signature_ok=yes)
    assert not d.accepts_attestation(on_target, PLAN, at, signature_ok=no)
    assert not d.accepts_attestation(FACTS, PLAN, at, signature_ok=yes)
    assert not d.accepts_attestation(on_target, replace(PLAN, participation="Healthy"), at, yes)
    assert not d.accepts_attestation(on_target, PLAN, None, yes)
    assert d.healthy_since(at, NOW) == at
    assert d.healthy_since(NOW + timedelta(days=1), NOW) == NOW


def test_attestation_signature_checked_only_when_it_would_count() -> None:
    """A confirmed host attests on every checkin; its row makes the check moot."""

    def unexpected() -> bool:
        raise AssertionError("signature verified although a participation row exists")

    on_target = replace(FACTS, current_closure=DECLARED)
    row_exists = replace(PLAN, participation="Healthy")
    assert not d.accepts_attestation(on_target, row_exists, NOW, signature_ok=unexpected)


def test_rollback_signal_only_for_failed_under_rollback_and_halt() -> None:
    sig = d.rollback_signal("h1", RID, RID, "Failed", "rollback-and-halt")
    assert sig == RollbackSignal(
        rollout=RID, target_ref=RID, reason="policy: rollback-and-halt; host h1 is Failed"
    )
    assert d.rollback_signal("h1", RID, RID, "Failed", "halt") is None
    assert d.rollback_signal("h1", RID, RID, "Reverted", "rollback-and-halt") is None


def test_gate_is_consulted_only_when_it_changes_the_outcome() -> None:
    asked: list[int] = []

    def gate() -> str | None:
        asked.append(1)
        return "quarantine: x"

    reoffer = d.decide_checkin(FACTS, PLAN, row(d.PENDING), gate, NOW)
    assert isinstance(reoffer, d.Dispatch) and reoffer.reoffer
    assert asked == []
    held = d.NoTarget(reason="held by fleet-level gate: quarantine: x")
    assert d.decide_checkin(FACTS, PLAN, None, gate, NOW) == held
    on_target = replace(FACTS, current_closure=DECLARED)
    assert d.decide_checkin(on_target, PLAN, None, gate, NOW) == held
    assert len(asked) == 2


def test_a_transient_fetch_failure_does_not_hold_the_host() -> None:
    """The CP was down when the agent fetched the manifest: dispatch again."""
    facts = replace(FACTS, last_fetch_outcome=FetchOutcome(result="fetch-failed", rollout_id=RID))
    assert isinstance(d.decide_checkin(facts, PLAN, None, NO_GATE, NOW), d.Dispatch)
    unknown = replace(FACTS, last_fetch_outcome=FetchOutcome(result="fetch-failed"))
    assert isinstance(d.decide_checkin(unknown, PLAN, None, NO_GATE, NOW), d.Dispatch)


def test_pending_target_is_offered_again_to_a_host_that_lost_it() -> None:
    """Issue 9 #12: an agent killed after receiving its target, before switching,
    checks in idle on the old closure: the same row's target again, its own deadline."""
    pending = row(d.PENDING, deadline=NOW + timedelta(seconds=200))
    again = d.decide_checkin(FACTS, PLAN, pending, NO_GATE, NOW)
    assert again == d.Dispatch(
        rollout_id=RID,
        closure_hash=DECLARED,
        wave_index=0,
        confirm_deadline=NOW + timedelta(seconds=200),
        reoffer=True,
    )


@pytest.mark.parametrize(
    ("facts", "plan", "op"),
    [
        (FACTS, PLAN, row(d.PENDING, deadline=NOW + d.MIN_REOFFER_WINDOW - timedelta(seconds=1))),
        (FACTS, PLAN, row(d.PENDING, closure=OLD)),
        (FACTS, PLAN, row(d.PENDING, rid="b" * 64)),
        (FACTS, replace(PLAN, rollout_halted=True), row(d.PENDING)),
        (FACTS, replace(PLAN, participation="Failed"), row(d.PENDING)),
        (
            replace(
                FACTS,
                last_fetch_outcome=FetchOutcome(result="verify-failed", rollout_id=RID),
            ),
            PLAN,
            row(d.PENDING),
        ),
    ],
    ids=["window-nearly-over", "other-closure", "other-rollout", "halted", "failed", "verify"],
)
def test_pending_target_is_not_offered_again(
    facts: d.CheckinFacts, plan: d.HostPlan, op: d.OpRow
) -> None:
    decision = d.decide_checkin(facts, plan, op, NO_GATE, NOW)
    assert isinstance(decision, d.NoTarget), decision
