"""Reference harness scenario `concurrent-checkin`: checkins racing snapshot swaps never
see a torn (snapshot, rollout id) pair.

Five loops; in each, CI publishes two releases while bursts of concurrent checkins are
sent by hand as a host whose agent is down. Every target a reply carries must pair the
closure of one release with that same release's rollout id, and each release is
dispatched under at most one rollout id. Unlike the reference (which passed with no
dispatch at all) the run must see at least one dispatch and ten snapshot swaps. The
other hosts' agents run throughout and must converge on the last release. (The host
by hand confirms closures it never runs, so it is re-dispatched after its confirms: no
ghost-loop check here.)
"""

from collections import defaultdict

from fleet_sim.checkers import Run, Verdict, all_converged, rollout_finished
from harness.byhand import (
    HandDispatch,
    at_once,
    checkin_by_hand,
    confirm_by_hand,
    served,
    target_of,
)
from harness.fleet import CALL, RELEASE, SNAPSHOT, Fleet, Reply, Scenario, Shape, expect
from harness.steps import wait_settled
from nixfleet.core import protocol

LOOPS = 5
RELEASES_PER_LOOP = 2
BURST = 4
BURST_GAP_POLLS = 0.25
MIN_SWAPS = 10


def release_of_closure(closure: str) -> int:
    """Closures are `<hash>-nixos-system-<host>-<release>` on every backend."""
    return int(closure.rsplit("-", 1)[1])


class Seen:
    """Every (rollout id, closure) pair the checkin replies carried."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.rollouts: dict[int, set[str]] = defaultdict(set)
        self.dispatches = 0
        self.last: HandDispatch | None = None

    def take(self, reply: Reply, ids: dict[int, str]) -> None:
        expect(reply.status == 200, "200 for every checkin", reply.line())
        target = target_of(reply)
        if target is None:
            return
        self.dispatches += 1
        rid, closure = str(target["rolloutId"]), str(target["closureHash"])
        wave = int(target.get("waveIndex") or 0)
        self.last = HandDispatch(self.host, rid, closure, wave, 0.0)
        release = release_of_closure(closure)
        expect(
            ids.get(release) == rid,
            f"a target pairing release {release}'s closure with its own rollout id "
            f"{ids.get(release)} (a torn snapshot/rollout-id pair otherwise)",
            f"rollout {rid} (release {next((n for n, r in ids.items() if r == rid), '?')})",
        )
        self.rollouts[release].add(rid)
        expect(
            len(self.rollouts[release]) <= 1,
            f"at most 1 rollout id for release {release}",
            sorted(self.rollouts[release]),
        )


def burst(fleet: Fleet, host: str, seen: Seen) -> None:
    replies = at_once(fleet, [lambda: checkin_by_hand(fleet, host)] * BURST)
    ids = {int(e.detail["release"]): str(e.detail["rollout"]) for e in fleet.history.of(RELEASE)}
    for reply in replies:
        seen.take(reply, ids)


def confirm_last(fleet: Fleet, seen: Seen) -> None:
    """Confirm the newest target by hand, so that the next release dispatches anew."""
    if seen.last is not None:
        confirm_by_hand(fleet, seen.last)
        seen.last = None


def steps(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    fleet.kill_agent(host)
    seen = Seen(host)
    for _ in range(LOOPS):
        for _ in range(RELEASES_PER_LOOP):
            release = fleet.release()
            # Bursts before, while and after the CP swaps to the new release.
            deadline = fleet.now() + fleet.polls(3)
            while not served(fleet, release) and fleet.now() < deadline:
                burst(fleet, host, seen)
                fleet.sleep(fleet.polls(BURST_GAP_POLLS))
            burst(fleet, host, seen)
            confirm_last(fleet, seen)
    expect(seen.dispatches >= 1, "at least one dispatch to the checkins by hand", seen.dispatches)
    fleet.start_agent(host)
    wait_settled(fleet, polls=30, then=0.5)


def enough_swaps(run: Run) -> Verdict:
    swaps = run.history.count(SNAPSHOT) - 1  # the first one is the start-up prime
    calls = sum(1 for e in run.history.of(CALL) if e.detail.get("path") == protocol.CHECKIN)
    ok = swaps >= MIN_SWAPS
    return Verdict("snapshot-swaps", ok, f"{swaps} snapshot swaps, {calls} checkins by hand")


SCENARIO = Scenario(
    id="harness-concurrent-checkin",
    source="reference harness scenario harness-concurrent-checkin",
    summary="checkins racing 10 snapshot swaps: no torn (closure, rollout id) pair",
    shape=Shape(hosts=8, local_hosts=2, seed=14),
    steps=steps,
    checks=[enough_swaps, all_converged, rollout_finished],
    mutant="snapshot-hash-swapped-apart",
    backends=frozenset({"qemu", "sim", "local"}),
)
