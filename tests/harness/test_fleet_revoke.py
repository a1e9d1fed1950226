"""`Fleet.revoke`: CI's signed revocations sidecar, applied by the CP's own poll."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends import local, sim
from harness.fleet import REVOKE, Fleet, NotAvailable, Shape

SHAPE = Shape(hosts=3, local_hosts=2, seed=3, revocations_sidecar=True)
CHECKIN = "/v1/agent/checkin"


def revoked_after_a_poll(fleet: Fleet) -> None:
    bad, good = fleet.hosts[0], fleet.hosts[1]
    assert fleet.call("GET", "/v1/whoami", as_=bad).status == 200
    fleet.revoke([bad], reason="compromised")
    fleet.sleep(fleet.polls(2))
    assert fleet.call("GET", "/v1/whoami", as_=bad).status == 401
    assert fleet.call("GET", "/v1/whoami", as_=good).status == 200
    rows = fleet.cp.sql("SELECT hostname, reason, source FROM cert_revocations")
    assert rows == [(bad, "compromised", "sidecar")]
    assert [e.host for e in fleet.history.of(REVOKE)] == [bad]


def test_sim_revoke_goes_through_the_cp_poll() -> None:
    with sim.open_fleet(SHAPE, Path("."), None) as fleet:
        revoked_after_a_poll(fleet)


def test_sim_revoke_needs_the_sidecar() -> None:
    with (
        sim.open_fleet(Shape(hosts=2), Path("."), None) as fleet,
        pytest.raises(NotAvailable, match="revocations_sidecar"),
    ):
        fleet.revoke([fleet.hosts[0]])


@pytest.mark.slow
def test_local_revoke_is_the_real_sidecar(tmp_path: Path) -> None:
    with local.open_fleet(SHAPE, tmp_path, None) as fleet:
        revoked_after_a_poll(fleet)
