"""Seed 000 "Rollback timer never marks expired rows".

Hosts cut off right after their dispatch activate, cannot confirm, and roll back by
their watchdog. While they are away nothing but the CP's sweep can end their
dispatches: their `pending` rows (deadline on the same UTC date) must leave `pending`
once the deadline has passed (the seed's symptom: they stay pending indefinitely).
Once the link is back the hosts' kept rollback reports reach the CP; the rollout then
converges or halts with those hosts accounted for.
"""

from fleet_sim.checkers import DEFAULT
from harness.fleet import DISPATCH, Fleet, Scenario, Shape
from harness.steps import pick, wait_settled


def still_pending(fleet: Fleet, hosts: list[str]) -> list[str]:
    """Those of `hosts` with a `pending` dispatch row (the cookbook's table)."""
    rows = fleet.cp.sql("SELECT DISTINCT hostname FROM pending_confirms WHERE state = 'pending'")
    return sorted(set(hosts) & {str(row[0]) for row in rows})


def steps(fleet: Fleet) -> None:
    cut = pick(fleet, 0.2, salt="partition")
    fleet.slow_activation(cut, fleet.polls(0.5))  # the cut lands before the confirm
    fleet.release()
    fleet.wait_until(
        lambda: all(fleet.history.count(DISPATCH, h) for h in cut),
        fleet.polls(5),
        "the hosts to cut off to get their target",
    )
    # Cut off for longer than the confirm window and the sweep after it.
    fleet.partition(cut, fleet.confirm_window + fleet.polls(5))
    fleet.wait_until(
        lambda: not still_pending(fleet, cut),
        fleet.confirm_window + fleet.polls(3),
        f"the cut-off hosts' dispatch rows to expire ({len(cut)} hosts)",
    )
    wait_settled(fleet, polls=30)


SCENARIO = Scenario(
    id="rollback-timer-datetime-compare",
    source="seed 000: Rollback timer never marks expired rows",
    summary="hosts cut off after their dispatch: their rows expire while they are away",
    shape=Shape(hosts=100, local_hosts=3, waves=1, seed=3),
    steps=steps,
    checks=DEFAULT,
    mutant="sweep-raw-text-compare",
    # ssh: the hosts cut off are reached over SSH (the hardware lab issue asks for it).
    backends=frozenset({"sim", "local", "qemu", "ssh"}),
)
