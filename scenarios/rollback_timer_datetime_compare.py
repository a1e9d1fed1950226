"""Seed 000 "Rollback timer never marks expired rows".

Hosts cut off right after their dispatch activate, cannot confirm, and roll back by
their watchdog. The CP's sweep must expire their `pending` rows (same UTC date as the
deadline) so they are dispatched again once the partition heals.
"""

from fleet_sim.checkers import DEFAULT, all_converged
from fleet_sim.faults import Partition
from fleet_sim.world import SimConfig
from harness.scenario import Scenario

SCENARIO = Scenario(
    id="rollback-timer-datetime-compare",
    source="seed 000: Rollback timer never marks expired rows",
    summary="20 % of hosts partitioned after dispatch; rows must expire, hosts reconverge",
    config=lambda: SimConfig(
        hosts=100,
        waves=1,
        seed=3,
        duration=3600,
        faults=[Partition(at=125, duration=900, hosts=0.2)],
    ),
    checks=[*DEFAULT, all_converged],
    mutant="sweep-raw-text-compare",
)
