"""Seed 000 "CP stair-steps backwards through deploy history".

CI builds each closure before the `[skip ci]` release commit, so the artifact baked
into the CP is always one release behind. Across releases and CP restarts the
verified snapshot must never go back to an older `signedAt`.
"""

import itertools

from fleet_sim.checkers import DEFAULT, Verdict, all_converged
from fleet_sim.faults import CpCrash
from fleet_sim.world import SimConfig, World
from harness.scenario import Scenario


def snapshot_monotonic(world: World) -> Verdict:
    numbers = [int(op.detail["release"]) for op in world.history.of("snapshot")]
    backwards = [(a, b) for a, b in itertools.pairwise(numbers) if b < a]
    if backwards:
        return Verdict("snapshot-monotonic", False, f"went back {backwards[:3]}")
    return Verdict("snapshot-monotonic", True, f"releases {numbers}")


SCENARIO = Scenario(
    id="cp-stair-step-prime",
    source="seed 000: CP stair-steps backwards through deploy history",
    summary="three releases, two CP restarts; the snapshot never steps back",
    config=lambda: SimConfig(
        hosts=60,
        waves=1,
        seed=5,
        duration=4 * 3600,
        later_releases_at=(1500.0, 3000.0),
        faults=[
            CpCrash(at=1800, duration=10, name="restart-1"),
            CpCrash(at=3300, duration=10, name="restart-2"),
        ],
    ),
    checks=[snapshot_monotonic, *DEFAULT, all_converged],
    mutant="snapshot-replaced-by-older",
)
