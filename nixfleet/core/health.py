"""Health probes as the CP reads them (lifecycle §2.1 H11, §5.11).

Two questions, answered once: may a Healthy host soak (probes passing and observed),
and has a Healthy or Soaked host been failing long enough to be marked Failed?
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from .wire import PROBE_FAIL, PROBE_PASS, PROBE_UNKNOWN, HealthProbe

FAILURE_THRESHOLD = timedelta(seconds=60)
"""A probe not passing for this long fails the host (H11); the CP's
`--health-failure-secs`."""


def probes_passing(mode: str | None, probes: Sequence[HealthProbe]) -> bool:
    """enforce: every probe passes; permissive: none fails; otherwise true."""
    if mode == "enforce":
        return all(p.status == PROBE_PASS for p in probes)
    if mode == "permissive":
        return not any(p.status == PROBE_FAIL for p in probes)
    return True


def probes_observed(
    mode: str | None, probes: Sequence[HealthProbe], *, on_target: bool = True
) -> bool:
    """With probes under enforce/permissive, at least one has a result (not unknown)
    and the checkin came from the system the host is judged on (`on_target`; the
    checkin before a switch speaks for the previous one): a host never soaks on probes
    nobody has run on its new system yet."""
    if mode in ("enforce", "permissive") and probes:
        return on_target and any(p.status != PROBE_UNKNOWN for p in probes)
    return True


def is_failing(probes: Sequence[HealthProbe]) -> bool:
    """H11 counts any probe that is not `pass` (unknown included), in every mode."""
    return any(p.status != PROBE_PASS for p in probes)


def failing_since(previous: datetime | None, failing: bool, now: datetime) -> datetime | None:
    """The start of the current failing streak; None once every probe passes."""
    if not failing:
        return None
    return previous if previous is not None else now


def has_failed(
    since: datetime | None, now: datetime, threshold: timedelta = FAILURE_THRESHOLD
) -> bool:
    return since is not None and now - since >= threshold
