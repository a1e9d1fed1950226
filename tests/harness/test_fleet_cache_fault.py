"""`Fleet.cache_fault`: with the binary cache down a release cannot be fetched; healed,
the host takes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends import local, sim
from harness.fleet import DISPATCH, FAULT, Fleet, Shape

SHAPE = Shape(hosts=2, local_hosts=1, confirm_window_polls=20.0, seed=6)


def contract(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    before = fleet.current(host)
    fleet.cache_fault("down")
    fleet.release()
    fleet.wait_until(
        lambda: fleet.history.count(DISPATCH, host) >= 2,
        fleet.polls(6),
        "the target offered again after a failed fetch",
    )
    assert fleet.current(host) == before
    fleet.cache_fault("ok")
    fleet.wait_until(lambda: fleet.converged([host]), fleet.polls(4), "the host to converge")
    phases = [e.detail["phase"] for e in fleet.history.of(FAULT) if e.detail["fault"] == "cache"]
    assert phases == ["down", "heal"]


def test_sim_cache_fault_blocks_the_fetch_until_healed() -> None:
    with sim.open_fleet(SHAPE, Path("."), None) as fleet:
        contract(fleet)
        with pytest.raises(ValueError, match="cache mode"):
            fleet.cache_fault("hang")


@pytest.mark.slow
def test_local_cache_fault_blocks_the_fetch_until_healed(tmp_path: Path) -> None:
    with local.open_fleet(SHAPE, tmp_path, None) as fleet:
        contract(fleet)
