"""`Fleet.forge_trust`: how the CP trusts the forge's private CA from its next start."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends import local, sim
from harness.fleet import FAULT, POLL_FAILED, NotAvailable, Shape

SHAPE = Shape(hosts=3, local_hosts=1, seed=3)


def test_sim_has_no_forge_tls() -> None:
    with sim.open_fleet(SHAPE, Path("."), None) as fleet, pytest.raises(NotAvailable):
        fleet.forge_trust("os-store")


@pytest.mark.slow
def test_local_os_store_trusts_the_forge_and_none_does_not(tmp_path: Path) -> None:
    with local.open_fleet(SHAPE, tmp_path, None) as fleet:
        with pytest.raises(ValueError):
            fleet.forge_trust("certifi")
        for how, fails in (("os-store", False), ("none", True)):
            fleet.forge_trust(how)
            fleet.cp.stop()
            since = fleet.now()
            fleet.cp.start()
            fleet.sleep(fleet.polls(2))
            failed = [
                str(e.detail["reason"]) for e in fleet.history.of(POLL_FAILED) if e.t >= since
            ]
            assert bool(failed) is fails, failed
            assert all("TLS certificate not trusted" in r for r in failed)
            assert "--upstream-ca" not in fleet.operator('echo "$CP_ARGS"')
        phases = [e.detail["phase"] for e in fleet.history.of(FAULT) if e.detail.get("fault")]
        assert phases[-2:] == ["os-store", "none"]
