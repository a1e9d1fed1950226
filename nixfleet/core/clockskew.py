"""An agent's clock skew as the CP sees it, and when to say so (issue 9 #13).

An agent stamps each checkin with `sentAt` (its own clock); the CP subtracts the
instant it received the body. The result also holds the network delay, so it reads a
little behind; beyond the ±60 s slack every freshness check allows, the host's clock is
wrong and its manifests get refused as future-dated (or stale). The CP warns then, at
most once per host every 10 minutes unless the skew moves by more than 30 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .freshness import CLOCK_SLACK_SECS

WARN_REPEAT = timedelta(minutes=10)
WARN_CHANGE_SECS = 30


def skew_secs(sent_at: datetime, received_at: datetime) -> int:
    """Agent clock minus CP clock, in whole seconds (negative: the agent is behind)."""
    return round((sent_at - received_at).total_seconds())


def is_skewed(skew: int) -> bool:
    """Further off than the slack the freshness checks allow."""
    return abs(skew) > CLOCK_SLACK_SECS


@dataclass(frozen=True, slots=True, kw_only=True)
class SkewWarned:
    """The last warning logged for a host."""

    at: datetime
    skew_secs: int


def should_warn(skew: int, last: SkewWarned | None, now: datetime) -> bool:
    """Warn about a skewed clock unless the same was said less than 10 minutes ago."""
    if not is_skewed(skew):
        return False
    return (
        last is None
        or now - last.at >= WARN_REPEAT
        or abs(skew - last.skew_secs) > WARN_CHANGE_SECS
    )
