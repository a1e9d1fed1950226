"""`Fleet.slow_probes` and `Shape.probe_mode` / `health_failure_polls`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.backends import local, sim
from harness.fleet import ACTIVATE, Shape

SHAPE = Shape(hosts=2, local_hosts=1, probe_mode="permissive", health_failure_polls=8, seed=5)


def test_sim_probe_is_unknown_until_the_delay_after_a_switch() -> None:
    with sim.open_fleet(SHAPE, Path("."), None) as fleet:
        host = fleet.hosts[0]
        fleet.slow_probes([host], fleet.polls(4))
        fleet.release()
        fleet.wait_until(lambda: fleet.converged([host]), fleet.polls(5), "the switch")
        sim_host = fleet.world.hosts[host]
        assert sim_host._probe().status == "unknown"
        assert sim_host._view().health_check_mode == "permissive"
        switched = [e.t for e in fleet.history.of(ACTIVATE, host)][-1]
        fleet.sleep(max(0.0, switched + fleet.polls(5) - fleet.now()))
        assert sim_host._probe().status == "pass"
        assert fleet.world.cp.settings.health_failure.total_seconds() == 480


def test_sim_default_shape_keeps_the_defaults() -> None:
    with sim.open_fleet(Shape(hosts=1), Path("."), None) as fleet:
        assert fleet.world.cp.settings.health_failure.total_seconds() == 60
        assert fleet.world.hosts[fleet.hosts[0]]._view().health_check_mode == "enforce"


@pytest.mark.slow
def test_local_probe_config_and_delay_file(tmp_path: Path) -> None:
    with local.open_fleet(SHAPE, tmp_path, None) as fleet:
        host = fleet.hosts[0]
        config = json.loads((fleet.local.host(host).dir / "health-checks.json").read_text())
        assert config["mode"] == "permissive"
        fleet.slow_probes([host], 3.5)
        assert (fleet.local.host(host).dir / "probe-delay").read_text() == "4\n"
        with pytest.raises(ValueError):
            fleet.slow_probes([host], 600)
