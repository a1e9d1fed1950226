"""The confirm-deadline comparison, written once.

The CP's rollback sweep (registered as an SQLite function so the SQL calls this very
code), the CP's confirm guard and the agent's watchdog all ask the same question.
Stored deadlines come in RFC 3339 (`T`) or SQLite (space) text; both sides are parsed
into instants before comparing. Comparing the raw text was seed 000's rollback-timer
bug: `T` sorts above a space, so a same-day deadline never looked expired.
"""

from __future__ import annotations

from datetime import datetime

from .timeutil import parse_instant


def deadline_passed(deadline: datetime, now: datetime) -> bool:
    """A deadline has passed from the instant it is reached: the watchdog fires at it."""
    return now >= deadline


def deadline_text_passed(deadline: str, now: str) -> bool:
    """`deadline_passed` on stored text (RFC 3339 or SQLite form) on both sides."""
    return deadline_passed(
        parse_instant(deadline, source="confirm_deadline"), parse_instant(now, source="now")
    )
