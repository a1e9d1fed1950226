"""The stuck-agent patterns of seed 002, named from a host's dispatch rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nixfleet.core.stuck import DispatchRow, Pattern, classify

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def row(id: int, state: str, *, closure: str = "a" * 32 + "-sys", deadline_ago: float = -300,
        confirmed: bool = False, terminal: str | None = None) -> DispatchRow:  # fmt: skip
    return DispatchRow(
        id=id,
        rollout_id="r" * 64,
        target_closure_hash=closure,
        state=state,
        terminal_state=terminal,
        dispatched_at=NOW - timedelta(minutes=10),
        confirm_deadline=NOW - timedelta(seconds=deadline_ago),
        confirmed_at=NOW if confirmed else None,
    )


def patterns(rows: list[DispatchRow]) -> list[Pattern]:
    return [f.pattern for f in classify(rows, NOW)]


def test_a_healthy_history_shows_nothing() -> None:
    assert patterns([]) == []
    assert patterns([row(2, "confirmed", closure="b" * 32 + "-s", confirmed=True),
                     row(1, "confirmed", confirmed=True)]) == []  # fmt: skip
    assert patterns([row(1, "pending", deadline_ago=60)]) == []  # within the grace


def test_each_pattern_is_named() -> None:
    assert patterns([row(1, "pending", deadline_ago=900)]) == [Pattern.PENDING_PAST_DEADLINE]
    loop = [
        row(3, "pending"),
        row(2, "confirmed", confirmed=True),
        row(1, "confirmed", confirmed=True),
    ]
    assert patterns(loop) == [Pattern.REPEATED_DISPATCH]
    assert patterns([row(1, "rolled-back")]) == [Pattern.ROLLED_BACK_BEFORE_ACTIVATION]


def test_a_target_already_running_is_not_a_repeat() -> None:
    rows = [
        row(2, "confirmed", confirmed=True),
        row(1, "confirmed", terminal="converged-at-dispatch"),
    ]
    assert patterns(rows) == []


def test_the_finding_line_names_host_rows_and_cause() -> None:
    (finding,) = classify([row(7, "pending", deadline_ago=900)], NOW)
    line = finding.line("stuckhost")
    assert line.startswith("stuckhost: pending-past-deadline: row 7 pending up to 15 min")
    assert "rollback timer" in line
