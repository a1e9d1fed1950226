"""`Fleet.switch_by_hand`: a workstation build of the declared closure, sim only."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends import sim
from harness.backends.local import LocalFleetBackend
from harness.fleet import FAULT, NotAvailable, Shape


def test_sim_switch_by_hand_keeps_the_name_changes_the_hash() -> None:
    with sim.open_fleet(Shape(hosts=2, seed=2), Path("."), None) as fleet:
        host = fleet.hosts[0]
        declared = str(fleet.target(host))
        built = fleet.switch_by_hand(host)
        assert fleet.current(host) == built != declared
        assert built.split("-", 1)[1] == declared.split("-", 1)[1]
        assert [e.host for e in fleet.history.of(FAULT)] == [host]
        fleet.wait_until(lambda: fleet.converged([host]), fleet.polls(3), "back on target")


def test_local_switch_by_hand_is_not_available() -> None:
    with pytest.raises(NotAvailable):
        LocalFleetBackend.switch_by_hand(object(), "h1")  # type: ignore[arg-type]
