"""`Fleet.release(keep=…)`: kept hosts keep their declared closure, the rollout changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends import local, sim
from harness.fleet import RELEASE, Fleet, Shape

SHAPE = Shape(hosts=3, local_hosts=2, seed=4)


def contract(fleet: Fleet) -> None:
    kept, other = fleet.hosts[0], fleet.hosts[1]
    fleet.release()
    fleet.sleep(fleet.polls(1))  # a later signedAt: the CP serves the newer one
    before = {h: fleet.target(h) for h in (kept, other)}
    fleet.release(keep=[kept])
    assert fleet.target(kept) == before[kept]
    assert fleet.target(other) != before[other]
    rollouts = [e.detail["rollout"] for e in fleet.history.of(RELEASE)]
    assert len(set(rollouts)) == len(rollouts) == 3, rollouts


def test_sim_keep_keeps_the_declared_closure() -> None:
    with sim.open_fleet(SHAPE, Path("."), None) as fleet:
        contract(fleet)
        kept = fleet.hosts[0]
        fleet.wait_until(fleet.converged, fleet.polls(10), "the fleet to converge")
        assert fleet.current(kept) == fleet.target(kept)


def test_sim_unhealthy_names_the_kept_closure() -> None:
    with sim.open_fleet(SHAPE, Path("."), None) as fleet:
        host = fleet.hosts[0]
        fleet.release(unhealthy=[host])
        fleet.sleep(fleet.polls(1))
        fleet.release(keep=[host], unhealthy=[host])
        world = fleet.world
        assert world.hosts[host].behaviour.unhealthy_after == 1
        assert world.declared[host] == 1 and world.declared[fleet.hosts[1]] == 2


@pytest.mark.slow
def test_local_keep_keeps_the_declared_closure(tmp_path: Path) -> None:
    with local.open_fleet(SHAPE, tmp_path, None) as fleet:
        contract(fleet)
