"""A clean release through three waves: every host activates once and converges."""

from fleet_sim.checkers import CLEAN_RUN
from fleet_sim.world import SimConfig
from harness.scenario import Scenario

SCENARIO = Scenario(
    id="clean-rollout",
    source="property: the rollout engine's happy path (lifecycle §3)",
    summary="300 hosts, three waves, 60 s polling: converge with one activation each",
    config=lambda: SimConfig(hosts=300, waves=3, poll_secs=60, seed=1),
    checks=CLEAN_RUN,
)
