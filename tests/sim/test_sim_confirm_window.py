"""The simulated CP refuses a confirm window the agents' switch can outlast through the
production check (`nixfleet.cp.config.confirm_window_problem`), as `serve` does."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest

from fleet_sim.main import main
from fleet_sim.world import SimConfig, World
from nixfleet.core.errors import BadInput
from nixfleet.cp import config as cp_config


def test_a_window_below_the_switch_timeout_is_refused() -> None:
    with pytest.raises(BadInput, match=r"--confirm-deadline-secs 120 is below the agents'"):
        World(SimConfig(hosts=2, confirm_window_secs=120))


def test_a_window_above_the_switch_timeout_is_taken() -> None:
    world = World(SimConfig(hosts=2, confirm_window_secs=120, agent_switch_timeout_secs=110))
    assert world.cp.settings.confirm_window.total_seconds() == 120
    assert world.cp.agent_switch_timeout_secs == 110


def test_it_is_the_production_check() -> None:
    with mock.patch.object(cp_config, "confirm_window_problem", lambda *_a: None):
        World(SimConfig(hosts=2, confirm_window_secs=120))


def test_refused_reconfiguration_keeps_the_settings() -> None:
    world = World(SimConfig(hosts=2))
    with pytest.raises(BadInput):
        world.cp.configure(300, 300)
    assert world.cp.settings.confirm_window.total_seconds() == 360
    world.cp.configure(310, 300)
    assert world.cp.settings.confirm_window.total_seconds() == 310


def test_scenario_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "short.toml"
    path.write_text("hosts = 2\nconfirm_window_secs = 120\n")
    assert main(["run", "--scenario", str(path), "--no-report"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith(f"fleet-sim: {path}: confirm_window_secs: --confirm-deadline-secs 120")
    path.write_text("hosts = 2\nconfirm_window_secs = 120\nagent_switch_timeout_secs = 0\n")
    assert main(["run", "--scenario", str(path), "--no-report"]) == 2
    assert "agent_switch_timeout_secs: must be ≥ 1" in capsys.readouterr().err
