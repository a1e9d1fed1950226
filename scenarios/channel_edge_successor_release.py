"""`channel-edge-successor-release`: a channel edge releases its successor exactly when
the all-at-once predecessor has converged, never before and never later.

Two channels: `canary`, all-at-once (an empty wave list), gates `stable` (a fleet
`channelEdges` entry). An all-at-once rollout converges once every host of its channel
reports the declared closure as its running system (docs/lifecycle.md §3.2 Phase B
step 2); a converged (terminal) predecessor releases its successors, whatever host
states it holds (§3.4 "Predecessor blocked").

1. Arrival: a release with slow switches on `canary`. Its rollout's terminal stamp
   stays null until every `canary` host runs its closure, `stable` is not dispatched
   before that, and is dispatched within a poll (its hosts' next checkin) after.
   No `canary` host is left Healthy in the converged rollout.
2. Unchanged predecessor: `canary`'s hosts are cut off and the next release keeps
   their closures. Their rollout converges on what they last reported, with no host
   state recorded, and `stable` is still dispatched within a poll of that.

Old (reference commits c5a87fa, c3ab9d7): an all-at-once channel went terminal at the
first tick, before its hosts arrived, stranding them at Healthy; a terminal
predecessor with no host states still blocked its successors.
"""

from __future__ import annotations

from collections.abc import Sequence

from fleet_sim.checkers import all_converged
from harness.fleet import DISPATCH, RELEASE, ChannelShape, Fleet, Scenario, Shape, expect
from harness.steps import wait_settled

PRED, SUCC = "canary", "stable"
SWITCH_POLLS = 2.0
"""How long each `canary` switch takes in the first release: its rollout must not go
terminal meanwhile."""
CUT_POLLS = 8.0
"""`canary` is cut off this long in the second release, well past the bound below."""
RELEASE_POLLS = 1.25
"""The successor is dispatched within one poll (its hosts' next checkin, plus the
round trip) of the predecessor's terminal stamp."""
TERMINAL_POLLS = 12.0
"""Ample for the CP to fetch the release and the slow switches to land."""
CONVERGED = "Converged"


def rollouts_of(fleet: Fleet, release: int) -> dict[str, str]:
    """Channel → rollout id of `release` (its `release` event)."""
    event = next(e for e in fleet.history.of(RELEASE) if e.detail.get("release") == release)
    return {str(c): str(r) for c, r in event.detail["rollouts"].items()}


def terminal(fleet: Fleet, rollout: str) -> bool:
    rows = fleet.cp.sql(f"SELECT terminal_at FROM rollouts WHERE rollout_id = '{rollout}'")
    return bool(rows) and rows[0][0] is not None


def host_states(fleet: Fleet, rollout: str) -> dict[str, str]:
    rows = fleet.cp.sql(
        f"SELECT hostname, host_state FROM host_rollout_state WHERE rollout_id = '{rollout}'"
    )
    return {str(h): str(s) for h, s in rows}


def dispatch_times(fleet: Fleet, rollout: str) -> list[float]:
    return [e.t for e in fleet.history.of(DISPATCH) if e.detail.get("rollout") == rollout]


def wait_terminal(fleet: Fleet, rollouts: dict[str, str], pred: Sequence[str]) -> float:
    """Until the predecessor's rollout is terminal; at every look before that, the
    successor may not have been dispatched while a predecessor host is off its
    closure, and when the stamp shows, every predecessor host must run its closure.
    Returns the fleet time the stamp was first seen."""
    early: list[str] = []

    def done() -> bool:
        arrived = fleet.converged(pred)
        if not arrived and dispatch_times(fleet, rollouts[SUCC]) and not early:
            early.append(f"{SUCC} dispatched at {fleet.now():.0f} s")
        stamped = terminal(fleet, rollouts[PRED])
        if stamped and not arrived and not early:
            waiting = [h for h in pred if not fleet.converged([h])]
            early.append(f"{PRED} terminal at {fleet.now():.0f} s with {waiting} not arrived")
        return stamped

    fleet.wait_until(done, fleet.polls(TERMINAL_POLLS), f"{PRED}'s rollout to converge")
    expect(
        not early,
        f"{PRED}'s all-at-once rollout terminal only once every host runs its closure, "
        f"and {SUCC} held until then",
        early[0] if early else "",
    )
    return fleet.now()


def released_within(fleet: Fleet, rollouts: dict[str, str], since: float, why: str) -> None:
    """The successor's first dispatch at most RELEASE_POLLS after `since`."""
    bound = fleet.polls(RELEASE_POLLS)
    what = f"{SUCC} dispatched within {RELEASE_POLLS:g} polls of {PRED} going terminal ({why})"
    try:
        fleet.wait_until(
            lambda: bool(dispatch_times(fleet, rollouts[SUCC])), since + bound - fleet.now(), what
        )
    except AssertionError:
        expect(False, what, f"none {bound:g} s after; {PRED}: {host_states(fleet, rollouts[PRED])}")
    first = dispatch_times(fleet, rollouts[SUCC])[0]
    expect(first - since <= bound, what, f"after {(first - since) / fleet.poll_secs:.2f} polls")


def arrival(fleet: Fleet, pred: Sequence[str]) -> None:
    fleet.slow_activation(pred, fleet.polls(SWITCH_POLLS))
    rollouts = rollouts_of(fleet, fleet.release())
    seen = wait_terminal(fleet, rollouts, pred)
    released_within(fleet, rollouts, seen, "its hosts arrived")
    wait_settled(fleet, then=2)
    stranded = {h: s for h, s in host_states(fleet, rollouts[PRED]).items() if s != CONVERGED}
    expect(not stranded, f"every {PRED} host Converged in its converged rollout", stranded)


def unchanged(fleet: Fleet, pred: Sequence[str]) -> None:
    fleet.partition(pred, fleet.polls(CUT_POLLS))
    rollouts = rollouts_of(fleet, fleet.release(keep=pred))
    seen = wait_terminal(fleet, rollouts, pred)
    states = host_states(fleet, rollouts[PRED])
    expect(not states, f"{PRED}'s rollout terminal with no host state (its hosts cut off)", states)
    released_within(fleet, rollouts, seen, "no host states, closures unchanged")
    wait_settled(fleet, polls=CUT_POLLS + 10, then=2)


def steps(fleet: Fleet) -> None:
    pred = fleet.hosts_of(PRED)
    arrival(fleet, pred)
    unchanged(fleet, pred)


SCENARIO = Scenario(
    id="channel-edge-successor-release",
    source="commits `c5a87fa`, `c3ab9d7`",
    summary=(
        "an all-at-once predecessor goes terminal only once every host runs its closure; "
        "its successor is dispatched within a poll of that, also with no host states"
    ),
    shape=Shape(
        hosts=4,
        local_hosts=1,
        waves=1,
        channels=(ChannelShape(name=PRED, hosts=3, local_hosts=2, waves=0),),
        channel_edges=((PRED, SUCC),),
        seed=21,
    ),
    steps=steps,
    checks=[all_converged],
    mutant="all-at-once-early-terminal",
)
