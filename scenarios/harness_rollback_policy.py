"""`rollback-and-halt`: a host failing its health probes after the switch is told to
roll back, rolls back once, and the rollout halts (reference harness-rollback-policy)."""

from fleet_sim.checkers import Run, Verdict
from harness.fleet import Fleet, Scenario, Shape
from harness.steps import pick, wait_settled


def failed_hosts_reverted(run: Run) -> Verdict:
    ro = run.final.rollout
    if ro is None:
        return Verdict("failed-hosts-reverted", None, "no rollout to inspect")
    states = list(ro.host_states.values())
    failed, reverted = states.count("Failed"), states.count("Reverted")
    ok = failed == 0 and reverted > 0
    return Verdict("failed-hosts-reverted", ok, f"{reverted} reverted, {failed} still failed")


def rollout_halted(run: Run) -> Verdict:
    ro = run.final.rollout
    state = ro.state if ro else None
    return Verdict("rollout-halted", state == "Halted", f"rollout state {state}")


def steps(fleet: Fleet) -> None:
    fleet.release(unhealthy=pick(fleet, 0.1, salt="unhealthy"))
    wait_settled(fleet, then=10)


SCENARIO = Scenario(
    id="harness-rollback-policy",
    source="reference harness scenario rollback-policy (scenarios.md F)",
    summary="10 % of hosts fail health probes under rollback-and-halt: halt, revert them",
    shape=Shape(hosts=200, local_hosts=3, waves=3, seed=21, policy="rollback-and-halt"),
    steps=steps,
    checks=[rollout_halted, failed_hosts_reverted],
    mutant="no-rollback-signal",
)
