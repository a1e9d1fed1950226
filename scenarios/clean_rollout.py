"""A clean release through three waves: every host activates once and converges."""

from fleet_sim.checkers import CLEAN_RUN
from harness.fleet import Fleet, Scenario, Shape
from harness.steps import wait_settled


def steps(fleet: Fleet) -> None:
    fleet.release()
    wait_settled(fleet)


SCENARIO = Scenario(
    id="clean-rollout",
    source="property: the rollout engine's happy path (lifecycle §3)",
    summary="one release through three waves: converge with one activation each",
    shape=Shape(hosts=300, local_hosts=3, waves=3, seed=1),
    steps=steps,
    checks=CLEAN_RUN,
    backends=frozenset({"sim", "local", "ssh"}),
)
