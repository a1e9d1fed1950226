"""`rollback-and-halt`: a host failing its health probes after the switch is told to
roll back, rolls back once, and the rollout halts (reference harness-rollback-policy)."""

from fleet_sim.checkers import Verdict
from fleet_sim.faults import HealthFailures
from fleet_sim.world import SimConfig, World
from harness.scenario import Scenario


def failed_hosts_reverted(world: World) -> Verdict:
    service, rid = world.cp.service, world.rollout_id
    if service is None or service.store is None or rid is None:
        return Verdict("failed-hosts-reverted", None, "no CP state to inspect")
    states = [r.host_state for r in service.store.participation_rows(rid)]
    failed, reverted = states.count("Failed"), states.count("Reverted")
    ok = failed == 0 and reverted > 0
    return Verdict("failed-hosts-reverted", ok, f"{reverted} reverted, {failed} still failed")


def rollout_halted(world: World) -> Verdict:
    service, rid = world.cp.service, world.rollout_id
    ro = service.store.rollout(rid) if service and service.store and rid else None
    state = ro.state if ro else None
    return Verdict("rollout-halted", state == "Halted", f"rollout state {state}")


SCENARIO = Scenario(
    id="harness-rollback-policy",
    source="reference harness scenario rollback-policy (scenarios.md F)",
    summary="10 % of hosts fail health probes under rollback-and-halt: halt, revert them",
    config=lambda: SimConfig(
        hosts=200,
        waves=3,
        seed=21,
        policy="rollback-and-halt",
        faults=[HealthFailures(at=0, hosts=0.1)],
    ),
    checks=[rollout_halted, failed_hosts_reverted],
    mutant="no-rollback-signal",
)
