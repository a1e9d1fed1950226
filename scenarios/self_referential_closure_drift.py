"""`self-referential-closure-drift` (seed 000 "CP's current closure ≠ artifact's
declared…"): not a bug, a property.

The flake reads the CP artifact from its own tree, so a workstation build made after
the release commit has the same name as CI's build and another store hash. A host
running such a build is simply off its declared closure: one activation brings it
back, within a poll plus the confirm window, and the next checkins dispatch nothing
more to it.
"""

from __future__ import annotations

from fleet_sim.checkers import Run, Verdict, converged_or_accounted, no_needless_410
from harness.fleet import ACTIVATE, CHECKIN, DISPATCH, Fleet, Scenario, Shape, expect
from harness.steps import pick

QUIET_CHECKINS = 3


def steps(fleet: Fleet) -> None:
    fleet.release()
    fleet.wait_until(fleet.converged, fleet.polls(30), "the fleet on its release")
    fleet.sleep(fleet.polls(2))  # confirmed, soaked, converged
    (host,) = pick(fleet, 1 / len(fleet.hosts), salt="workstation")
    declared = fleet.target(host)
    built = fleet.switch_by_hand(host)
    expect(
        built != declared and built.split("-", 1)[1] == str(declared).split("-", 1)[1],
        "the workstation build has the declared name and another store hash",
        built,
    )
    start = fleet.now()
    fleet.wait_until(
        lambda: fleet.converged([host]),
        fleet.polls(1) + fleet.confirm_window,
        f"{host} back on its declared closure",
    )
    switches = [e for e in fleet.history.of(ACTIVATE, host) if e.t >= start]
    expect(len(switches) == 1, f"one activation brings {host} back", len(switches))
    back = fleet.now()
    fleet.wait_until(
        lambda: sum(1 for e in fleet.history.of(CHECKIN, host) if e.t > back) >= QUIET_CHECKINS,
        fleet.polls(QUIET_CHECKINS + 2),
        f"{QUIET_CHECKINS} more checkins from {host}",
    )
    again = [e for e in fleet.history.of(DISPATCH, host) if e.t > back]
    expect(
        not again,
        f"the next {QUIET_CHECKINS} checkins dispatch nothing to {host}",
        f"{len(again)} dispatches",
    )


def hand_switched_host_reconverged(run: Run) -> Verdict:
    hosts = [e.host for e in run.history.of("fault") if e.detail.get("fault") == "switch-by-hand"]
    if not hosts:
        return Verdict("hand-switched-host-reconverged", None, "no host was switched by hand")
    off = sorted(str(h) for h in hosts if str(h) not in run.final.converged())
    return Verdict("hand-switched-host-reconverged", not off, f"off their closure: {off}")


SCENARIO = Scenario(
    id="self-referential-closure-drift",
    source="000 \"CP's current closure ≠ artifact's declared…\"",
    summary=(
        "a host on a workstation build of its declared closure (same name, another "
        "hash) converges in one activation and is then left alone"
    ),
    shape=Shape(hosts=5, waves=1, seed=13),
    steps=steps,
    # Not `no_ghost_loops`: the hand switch rightly re-dispatches the confirmed rollout.
    checks=[hand_switched_host_reconverged, converged_or_accounted, no_needless_410],
    mutant="report-hash-prefix",
    backends=frozenset({"ssh", "qemu", "sim"}),
    waiting={
        "ssh": "a hand-deployed workstation build (switch_by_hand) is simulated only so far",
        "qemu": "the QEMU backend (QEMU issue)",
    },
)
