"""Seed 000 "Agent re-dispatches the same target every checkin (ghost loop)".

The identity of a closure is its full store basename. An agent reporting only the
32-char hash never matches what the CP declares, so the CP dispatches on every
checkin even though the host already runs the target.
"""

from fleet_sim.checkers import CLEAN_RUN, Verdict
from fleet_sim.world import SimConfig, World
from harness.scenario import Scenario


def one_dispatch_per_host(world: World) -> Verdict:
    counts: dict[str, int] = {}
    for op in world.history.of("dispatch"):
        counts[str(op.host)] = counts.get(str(op.host), 0) + 1
    worst = max(counts.values(), default=0)
    return Verdict("one-dispatch-per-host", worst <= 1, f"most dispatches to one host: {worst}")


SCENARIO = Scenario(
    id="ghost-loop-closure-hash-truncation",
    source="seed 000: Agent re-dispatches the same target every checkin; seed 002 stuck agent",
    summary="50 hosts converge; after the first confirm no host is dispatched again",
    config=lambda: SimConfig(hosts=50, waves=1, seed=6, duration=3 * 3600, settle_polls=5),
    checks=[one_dispatch_per_host, *CLEAN_RUN],
    mutant="report-hash-prefix",
)
