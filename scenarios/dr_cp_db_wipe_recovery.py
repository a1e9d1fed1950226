"""Seed 001 disaster recovery: stop the CP, delete its database, start it again,
while hosts are between their switch and their confirm."""

from fleet_sim.checkers import DEFAULT, all_converged, checkins_after_restart
from fleet_sim.faults import CpWipe
from fleet_sim.world import SimConfig, World
from harness.scenario import Scenario


def _mid_activation(world: World) -> bool:
    return world.history.count("activate") - world.history.count("confirm") >= 20


SCENARIO = Scenario(
    id="dr-cp-db-wipe-recovery",
    source="seed 001: Disaster recovery - destroying the control plane",
    summary="CP DB wiped mid-rollout: hosts back ≤120 s, in-flight confirms 204, converge",
    config=lambda: SimConfig(
        hosts=400,
        waves=3,
        seed=31,
        soak_minutes=2,
        faults=[CpWipe(when=_mid_activation, check_every=1.0, duration=15)],
    ),
    checks=[*DEFAULT, all_converged, checkins_after_restart(120)],
    mutant="no-orphan-recovery",
)
