"""`Fleet.generations`: each switch to a new closure adds one profile generation."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends import local, sim
from harness.fleet import Fleet, Shape

SHAPE = Shape(hosts=2, local_hosts=1, seed=3)


def contract(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    before = fleet.generations(host)
    assert before >= 1
    fleet.release()
    fleet.wait_until(lambda: fleet.converged([host]), fleet.polls(15), "the host to converge")
    assert fleet.generations(host) == before + 1


def test_sim_generations_count_the_profile() -> None:
    with sim.open_fleet(SHAPE, Path("."), None) as fleet:
        contract(fleet)


@pytest.mark.slow
def test_local_generations_count_the_profile(tmp_path: Path) -> None:
    with local.open_fleet(SHAPE, tmp_path, None) as fleet:
        contract(fleet)
