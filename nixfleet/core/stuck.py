"""Seed 002 "Diagnose a stuck agent": the three patterns the recipe tells the operator
to look for in a host's newest `pending_confirms` rows, named.

- rows `pending` long after their deadline: the rollback timer (the CP's sweep) is not
  expiring them;
- the same target dispatched again and again: the closure the agent reports never
  equals the one the CP declares (closure-hash format drift, the ghost loop);
- `rolled-back` rows never confirmed: the deadline expired before the agent's
  activation finished.

Pure: the CLI (`nixfleet diagnose`) reads the rows, this names what they show.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

PENDING = "pending"
ROLLED_BACK = "rolled-back"
CONVERGED_AT_DISPATCH = "converged-at-dispatch"
"""A row born terminal (the host already ran the target): not a dispatch sent."""

DEFAULT_GRACE = timedelta(minutes=2)
"""How long a row may stay `pending` past its deadline before the sweep is suspect:
a few sweep periods (30 s by default)."""


class Pattern(StrEnum):
    PENDING_PAST_DEADLINE = "pending-past-deadline"
    REPEATED_DISPATCH = "repeated-dispatch"
    ROLLED_BACK_BEFORE_ACTIVATION = "rolled-back-before-activation"


HINTS: dict[Pattern, str] = {
    Pattern.PENDING_PAST_DEADLINE: "the rollback timer is not expiring rows (CP sweep)",
    Pattern.REPEATED_DISPATCH: (
        "the agent's reported closure never matches the declared one "
        "(closure_hash format drift, ghost loop)"
    ),
    Pattern.ROLLED_BACK_BEFORE_ACTIVATION: (
        "the confirm deadline expired before the agent's activation finished"
    ),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchRow:
    """One `pending_confirms` row, its instants parsed (None: NULL or unreadable)."""

    id: int
    rollout_id: str
    target_closure_hash: str
    state: str
    terminal_state: str | None
    dispatched_at: datetime | None
    confirm_deadline: datetime | None
    confirmed_at: datetime | None


@dataclass(frozen=True, slots=True)
class Finding:
    pattern: Pattern
    rows: tuple[int, ...]
    detail: str

    def line(self, host: str) -> str:
        return f"{host}: {self.pattern}: {self.detail}: {HINTS[self.pattern]}"


def classify(
    rows: Sequence[DispatchRow], now: datetime, *, grace: timedelta = DEFAULT_GRACE
) -> list[Finding]:
    """The patterns `rows` (a host's newest dispatches) show, in the recipe's order."""
    found = (_overdue(rows, now, grace), _repeated(rows), _rolled_back(rows))
    return [f for f in found if f is not None]


def _overdue(rows: Sequence[DispatchRow], now: datetime, grace: timedelta) -> Finding | None:
    late = [
        r
        for r in rows
        if r.state == PENDING and r.confirm_deadline is not None
        and now - r.confirm_deadline > grace
    ]  # fmt: skip
    if not late:
        return None
    worst = max(now - r.confirm_deadline for r in late if r.confirm_deadline is not None)
    ids = tuple(r.id for r in late)
    return Finding(
        Pattern.PENDING_PAST_DEADLINE,
        ids,
        f"{_rows(ids)} pending up to {_minutes(worst)} past the deadline",
    )


def _repeated(rows: Sequence[DispatchRow]) -> Finding | None:
    sent = [r for r in rows if r.terminal_state != CONVERGED_AT_DISPATCH]
    counts = Counter(r.target_closure_hash for r in sent)
    target, n = counts.most_common(1)[0] if counts else ("", 0)
    if n < 2:
        return None
    ids = tuple(r.id for r in sent if r.target_closure_hash == target)
    return Finding(Pattern.REPEATED_DISPATCH, ids, f"{target} dispatched {n} times ({_rows(ids)})")


def _rolled_back(rows: Sequence[DispatchRow]) -> Finding | None:
    ids = tuple(r.id for r in rows if r.state == ROLLED_BACK and r.confirmed_at is None)
    if not ids:
        return None
    return Finding(
        Pattern.ROLLED_BACK_BEFORE_ACTIVATION, ids, f"{_rows(ids)} rolled back unconfirmed"
    )


def _rows(ids: Sequence[int]) -> str:
    return ("row " if len(ids) == 1 else "rows ") + ", ".join(str(i) for i in ids)


def _minutes(d: timedelta) -> str:
    secs = int(d.total_seconds())
    return f"{secs // 60} min {secs % 60} s" if secs >= 60 else f"{secs} s"
