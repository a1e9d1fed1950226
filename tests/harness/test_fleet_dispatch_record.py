"""`Fleet.dispatch_record`: the agent's unconfirmed dispatch, gone after its 204."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends import local, sim
from harness.fleet import Fleet, Shape

SHAPE = Shape(hosts=2, local_hosts=1, seed=5)


def contract(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    assert fleet.dispatch_record(host) is None
    fleet.slow_activation([host], fleet.polls(1))
    fleet.release()
    fleet.wait_until(
        lambda: fleet.dispatch_record(host) is not None, fleet.polls(5), "a dispatch record"
    )
    record = fleet.dispatch_record(host)
    assert record is not None
    assert record["closure"] == fleet.target(host)
    assert len(record["rollout"]) == 64 and record["dispatched_at"].endswith("Z")
    fleet.wait_until(
        lambda: fleet.converged([host]) and fleet.dispatch_record(host) is None,
        fleet.polls(10),
        "the confirm to clear the record",
    )


def test_sim_dispatch_record_lives_until_the_confirm() -> None:
    with sim.open_fleet(SHAPE, Path("."), None) as fleet:
        contract(fleet)


@pytest.mark.slow
def test_local_dispatch_record_lives_until_the_confirm(tmp_path: Path) -> None:
    with local.open_fleet(SHAPE, tmp_path, None) as fleet:
        contract(fleet)
