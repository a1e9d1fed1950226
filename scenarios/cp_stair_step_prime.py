"""Seed 000 "CP stair-steps backwards through deploy history".

CI builds each closure before the `[skip ci]` release commit, so the artifact baked
into the CP is always one release behind. Across releases and CP restarts the
verified snapshot must never go back to an older `signedAt`. The mutant is the seed's
own bug in the CP's start-up module (`nixfleet.cp.lifecycle`): prime from the baked
artifact, the forge left to the first poll.
"""

import itertools

from fleet_sim.checkers import DEFAULT, Run, Verdict, all_converged
from harness.fleet import SNAPSHOT, Fleet, Scenario, Shape
from harness.steps import wait_settled


def snapshot_monotonic(run: Run) -> Verdict:
    numbers = [int(e.detail["release"]) for e in run.history.of(SNAPSHOT)]
    backwards = [(a, b) for a, b in itertools.pairwise(numbers) if b < a]
    if backwards:
        return Verdict("snapshot-monotonic", False, f"went back {backwards[:3]}")
    if len(set(numbers)) < 4:
        return Verdict("snapshot-monotonic", None, f"too few releases served: {numbers}")
    return Verdict("snapshot-monotonic", True, f"releases {numbers}")


def steps(fleet: Fleet) -> None:
    for _ in range(3):
        fleet.release()
        wait_settled(fleet, then=1)
        # Restart the CP on the newest release: it must prime from the forge, not
        # from its baked artifact (one release behind).
        fleet.cp.crash()
        fleet.cp.start()
        fleet.sleep(fleet.polls(2))


SCENARIO = Scenario(
    id="cp-stair-step-prime",
    source="seed 000: CP stair-steps backwards through deploy history",
    summary="three releases, a CP restart after each; the snapshot never steps back",
    shape=Shape(hosts=60, local_hosts=3, waves=1, seed=5),
    steps=steps,
    checks=[snapshot_monotonic, *DEFAULT, all_converged],
    mutant="prime-from-build-time",
)
