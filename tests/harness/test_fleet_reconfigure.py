"""`cp.reconfigure(confirm_window=…, switch_timeout=…)`: the CP restarted with a new
confirm window and agents' switch budget; a pair the CP's own check refuses raises
CpExited with its one line and leaves the previous settings (on both backends)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends import local, sim
from harness.fleet import CpExited, Shape

REFUSED = "is below the agents' switch timeout"


def test_sim_refused_then_taken() -> None:
    fleet = sim.SimFleet(Shape(hosts=2))
    assert (fleet.confirm_window, fleet.switch_timeout) == (360, 300)
    with pytest.raises(CpExited) as refused:
        fleet.cp.reconfigure(confirm_window=120, switch_timeout=300)
    assert refused.value.status == 2 and REFUSED in str(refused.value)
    assert "--confirm-deadline-secs 120" in refused.value.output
    assert not fleet.world.cp.reachable and fleet.confirm_window == 360
    fleet.cp.start()
    fleet.cp.reconfigure(confirm_window=130, switch_timeout=120)
    assert (fleet.confirm_window, fleet.switch_timeout) == (130, 120)
    assert fleet.world.cp.reachable


@pytest.mark.slow
def test_local_refused_then_taken(tmp_path: Path) -> None:
    with local.open_fleet(Shape(local_hosts=1), tmp_path, None) as fleet:
        assert (fleet.confirm_window, fleet.switch_timeout) == (30, 20)
        with pytest.raises(CpExited) as refused:
            fleet.cp.reconfigure(confirm_window=30, switch_timeout=25)
        assert refused.value.status == 2 and REFUSED in str(refused.value)
        assert not fleet.cp.running and fleet.confirm_window == 30
        fleet.cp.start()  # the previous flags
        assert fleet.call("GET", "/healthz", as_=None).status == 200
        before = len(fleet.local.host("h1").agents)
        fleet.cp.reconfigure(confirm_window=40, switch_timeout=30)
        assert (fleet.confirm_window, fleet.switch_timeout) == (40, 30)
        agents = fleet.local.host("h1").agents
        assert len(agents) == before + 1 and agents[-1].running()
        assert "--switch-timeout-secs" in agents[-1].proc.args  # type: ignore[operator]
        argv = list(agents[-1].proc.args)  # type: ignore[call-overload]
        assert argv[argv.index("--switch-timeout-secs") + 1] == "30"
