"""Steps scenarios share, written once against the backend-neutral `Fleet`."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from .fleet import ACTIVATE, CONFIRM, RELEASE, Fleet, Reply, StepTimeout, expect


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


def wait_settled(fleet: Fleet, *, polls: float = 30, then: float = 5) -> None:
    """Until the newest rollout converged or halted, then `then` more polls for the
    stragglers (rollbacks, late confirms) to show in the history."""
    fleet.wait_until(lambda: settled(fleet), fleet.polls(polls), "the rollout to settle")
    fleet.sleep(fleet.polls(then))


def dr_restart(fleet: Fleet) -> float:
    """Seed 001's procedure: stop the CP, delete its DB (+ -wal, -shm), start it again a
    quarter poll later. Returns the fleet time the CP was started (before it primed)."""
    fleet.cp.stop()
    fleet.cp.wipe()
    fleet.sleep(fleet.polls(0.25))
    started = fleet.now()
    fleet.cp.start()
    return started


def ask_cp(
    fleet: Fleet,
    method: str,
    path: str,
    *,
    as_: str | None,
    until: Callable[[Reply], bool],
    within: float,
    what: str,
) -> list[Reply]:
    """Ask the CP again and again (each a recorded `call`) until a reply satisfies
    `until`, for at most `within` seconds. Returns every reply, the good one last;
    StepFailed names `what` and the last reply seen."""
    replies: list[Reply] = []

    def good() -> bool:
        replies.append(fleet.call(method, path, as_=as_))
        return until(replies[-1])

    try:
        fleet.wait_until(good, within, what)
    except StepTimeout:
        last = replies[-1].line() if replies else "no reply"
        expect(False, f"{what} within {within:g} s", last)
    return replies


def field_of(reply: Reply, key: str) -> object:
    """`key` of a JSON object reply; None when absent or the body is no JSON object."""
    try:
        body = reply.json()
    except ValueError:
        return None
    return body.get(key) if isinstance(body, dict) else None


REVOCATIONS_VERIFIED = "revocations poll: list verified"


def revocations_verified(fleet: Fleet) -> list[int]:
    """`entries=` of each `revocations poll: list verified` line in the current CP
    run's journal (seed 001 Verify 3 greps it; a shell on the CP host)."""
    import re

    out = fleet.operator(f'grep -F "{REVOCATIONS_VERIFIED}" "$CP_LOG" || true')
    return [int(m.group(1)) for m in re.finditer(r"entries=(\d+)", out)]


def holds_within(fleet: Fleet, predicate: Callable[[], bool], within: float) -> bool:
    """Wait until `predicate()` holds, at most `within` seconds; whether it does (the
    caller then fails naming what it saw, which a bare StepTimeout cannot)."""
    try:
        fleet.wait_until(predicate, max(within, 0.0), "")
    except StepTimeout:
        return False
    return True
