"""Seed 000 "Rollback timer never marks expired rows".

Hosts cut off right after their dispatch activate, cannot confirm, and roll back by
their watchdog. The CP's sweep must expire their `pending` rows (same UTC date as the
deadline) so they are dispatched again once the partition heals.
"""

from fleet_sim.checkers import DEFAULT, all_converged
from harness.fleet import DISPATCH, Fleet, Scenario, Shape
from harness.steps import pick, wait_settled


def steps(fleet: Fleet) -> None:
    cut = pick(fleet, 0.2, salt="partition")
    fleet.slow_activation(cut, fleet.polls(0.5))  # the cut lands before the confirm
    fleet.release()
    fleet.wait_until(
        lambda: all(fleet.history.count(DISPATCH, h) for h in cut),
        fleet.polls(5),
        "the hosts to cut off to get their target",
    )
    # Longer than the confirm window: the rows expire while the hosts are away.
    fleet.partition(cut, fleet.polls(fleet.shape.confirm_window_polls * 2.5))
    wait_settled(fleet, polls=90)


SCENARIO = Scenario(
    id="rollback-timer-datetime-compare",
    source="seed 000: Rollback timer never marks expired rows",
    summary="hosts cut off after their dispatch: rows must expire, hosts reconverge",
    shape=Shape(hosts=100, local_hosts=3, waves=1, seed=3),
    steps=steps,
    checks=[*DEFAULT, all_converged],
    mutant="sweep-raw-text-compare",
)
