"""Seed 000 "Agent re-dispatches the same target every checkin (ghost loop)".

The identity of a closure is its full store basename. An agent reporting only the
32-char hash never matches what the CP declares, so the CP dispatches on every
checkin even though the host already runs the target.
"""

from collections import Counter

from fleet_sim.checkers import CLEAN_RUN, Run, Verdict
from harness.fleet import DISPATCH, Fleet, Scenario, Shape
from harness.steps import wait_settled


def one_dispatch_per_host(run: Run) -> Verdict:
    counts = Counter(str(e.host) for e in run.history.of(DISPATCH))
    worst = max(counts.values(), default=0)
    return Verdict("one-dispatch-per-host", worst == 1, f"most dispatches to one host: {worst}")


def steps(fleet: Fleet) -> None:
    fleet.release()
    wait_settled(fleet)


SCENARIO = Scenario(
    id="ghost-loop-closure-hash-truncation",
    source="seed 000: Agent re-dispatches the same target every checkin; seed 002 stuck agent",
    summary="hosts converge; after the first confirm no host is dispatched again",
    shape=Shape(hosts=50, local_hosts=3, waves=1, seed=6),
    steps=steps,
    checks=[one_dispatch_per_host, *CLEAN_RUN],
    mutant="report-hash-prefix",
    backends=frozenset({"sim", "local", "qemu", "ssh"}),
)
