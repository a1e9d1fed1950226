"""Seed 001 "When this fails", bullet 3 ("Recovery > 10× target"): the forge is down,
or refuses the CP's expired token, when the CP comes back from the DR wipe.

CI published a release while the CP was stopped, so what the CP holds itself (the
snapshot cache and the build-time artifact baked into its closure) is a release
behind. It must serve that fallback, say why under `channel-refs` naming the class
(`HTTP 503`, `HTTP 401`) within one poll, keep serving it while the forge fails, and
serve the newest release within one poll of the repair. The mutant is a CP that stops
asking the forge after a failed prime.

The forge hanging is left out here: the CP's upstream timeouts (a 10 s prime bound, a
15 s poll timeout) are fixed, so on a 2 s poll they cannot show in one poll.
"""

from harness.fleet import (
    FAULT,
    OPERATOR,
    POLL_FAILED,
    SNAPSHOT,
    Fleet,
    Reply,
    Scenario,
    Shape,
    expect,
)
from harness.steps import ask_cp, field_of, holds_within

CHANNEL = "/v1/channels/stable"
FAULTS = {"down": "HTTP 503", "unauthorized": "HTTP 401"}
"""`forge_fault` mode → the class the CP's failure line must name."""
REPAIR_SLACK_POLLS = 0.25
"""The poll's own fetch and verify: the CP's poll period runs from the end of the
previous poll, so one poll after the repair the fetch may still be under way."""


def served(fleet: Fleet) -> object:
    reply = fleet.call("GET", CHANNEL, as_=OPERATOR)
    return field_of(reply, "signed_at") if reply.status == 200 else reply.line()


def failures(fleet: Fleet, since: float, cls: str) -> list[float]:
    return [
        e.t
        for e in fleet.history.of(POLL_FAILED)
        if e.t >= since and e.detail.get("upstream") == "channel-refs"
        and cls in str(e.detail.get("reason"))
    ]  # fmt: skip


def snapshots(fleet: Fleet, since: float, release: int) -> list[float]:
    return [
        e.t for e in fleet.history.of(SNAPSHOT) if e.t >= since and e.detail["release"] == release
    ]


def answered(reply: Reply) -> bool:
    return reply.status == 200


def restart_with_forge(fleet: Fleet, mode: str) -> tuple[int, float]:
    """Stop the CP, CI releases meanwhile, the forge turns `mode`, wipe, start. Returns
    the release and the fleet time the CP was started."""
    fleet.cp.stop()
    newest = fleet.release()
    fleet.forge_fault(mode)
    fleet.cp.wipe()
    started = fleet.now()
    fleet.cp.start()
    return newest, started


def outage(fleet: Fleet, mode: str) -> None:
    cls = FAULTS[mode]
    fallback = served(fleet)
    newest, started = restart_with_forge(fleet, mode)
    replies = ask_cp(
        fleet, "GET", CHANNEL, as_=OPERATOR, until=answered, within=fleet.polls(1),
        what=f"{CHANNEL} 200 after the restart with the forge {mode}",
    )  # fmt: skip
    first = field_of(replies[-1], "signed_at")
    expect(first == fallback, f"the fallback ({fallback}) served with the forge {mode}", first)
    fleet.wait_until(
        lambda: bool(failures(fleet, started, cls)),
        fleet.polls(1) - (fleet.now() - started),
        f"a channel-refs failure line naming {cls} within one poll of the restart",
    )
    fleet.sleep(fleet.polls(2))
    still = served(fleet)
    expect(still == fallback, f"signed_at to stay at the fallback while the forge is {mode}", still)
    healed = fleet.now()
    fleet.forge_fault("ok")
    bound = fleet.polls(1 + REPAIR_SLACK_POLLS)
    expect(
        holds_within(fleet, lambda: bool(snapshots(fleet, healed, newest)), bound),
        f"release {newest} served within one poll of the forge's repair ({bound:g} s)",
        f"still {served(fleet)} after {fleet.now() - healed:.1f} s",
    )


def steps(fleet: Fleet) -> None:
    for mode in FAULTS:
        outage(fleet, mode)
    faults = [e.detail.get("phase") for e in fleet.history.of(FAULT)]
    expect(faults.count("heal") == len(FAULTS), "each forge fault healed", faults)


SCENARIO = Scenario(
    id="dr-fail-slow-upstream",
    source="001 bullet 3",
    summary="forge down / 401 at the DR restart: fallback served, cause logged, repair in a poll",
    shape=Shape(hosts=20, local_hosts=1, seed=13),
    steps=steps,
    checks=[],
    mutant="no-poll-after-failed-prime",
    backends=frozenset({"qemu", "sim", "local"}),
)
