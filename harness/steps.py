"""Steps scenarios share, written once against the backend-neutral `Fleet`."""

from __future__ import annotations

import random
from collections.abc import Sequence

from .fleet import ACTIVATE, CONFIRM, RELEASE, Fleet


def pick(fleet: Fleet, fraction: float, *, salt: str = "") -> list[str]:
    """A seeded choice of `fraction` of the hosts, at least one (a 3-host local fleet
    still gets a host cut off)."""
    names: Sequence[str] = sorted(fleet.hosts)
    count = max(1, round(len(names) * fraction))
    rng = random.Random(f"{fleet.shape.seed}:{salt}")
    return sorted(rng.sample(list(names), count))


def in_flight(fleet: Fleet) -> int:
    """Switches started and not (yet) confirmed with a 204."""
    confirmed = sum(1 for e in fleet.history.of(CONFIRM) if e.detail.get("status") == 204)
    return fleet.history.count(ACTIVATE) - confirmed


def newest_rollout(fleet: Fleet) -> str | None:
    releases = list(fleet.history.of(RELEASE))
    return str(releases[-1].detail["rollout"]) if releases else None


def settled(fleet: Fleet) -> bool:
    """The newest release's rollout converged or halted."""
    rid = newest_rollout(fleet)
    ro = next((r for r in fleet.final().rollouts if r.rollout_id == rid), None)
    return ro is not None and (ro.terminal or ro.state == "Halted")


def wait_settled(fleet: Fleet, *, polls: float = 60, then: float = 5) -> None:
    """Until the newest rollout converged or halted, then `then` more polls for the
    stragglers (rollbacks, late confirms) to show in the history."""
    fleet.wait_until(lambda: settled(fleet), fleet.polls(polls), "the rollout to settle")
    fleet.sleep(fleet.polls(then))
