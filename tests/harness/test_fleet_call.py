"""`Fleet.call`: one request to the CP through the same gates on every backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends import local, sim
from harness.fleet import CALL, FAULT, OPERATOR, POLL_FAILED, Fleet, Shape

SHAPE = Shape(hosts=3, local_hosts=1, seed=3)


def contract(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    health = fleet.call("GET", "/healthz", as_=None)
    assert health.status == 200 and health.json()["last_tick_at"] is not None
    assert fleet.call("GET", "/v1/whoami", as_=host).json()["cn"].startswith(f"agent-{host}.")
    assert fleet.call("GET", "/v1/channels/stable", as_=OPERATOR).status == 200
    refused = fleet.call("GET", "/v1/channels/stable", as_=host)
    assert refused.status == 403 and refused.json()["error"] == "forbidden", refused.line()
    assert fleet.call("GET", "/v1/channels/nope", as_=OPERATOR).status == 404
    assert fleet.call("GET", "/v1/whoami", as_=None).status == 401
    assert fleet.call("GET", "/v1/nothing-here", as_=OPERATOR).status == 404
    bad = fleet.call("POST", "/v1/agent/checkin", as_=host, body=b"{not json")
    assert bad.status == 400, bad.line()


def test_sim_call_answers_as_the_http_app() -> None:
    with sim.open_fleet(SHAPE, Path("."), None) as fleet:
        fleet.sleep(fleet.polls(1))
        contract(fleet)
        fleet.cp.crash()
        assert fleet.call("GET", "/healthz", as_=None).status == 0


@pytest.mark.slow
def test_local_call_is_real_mtls(tmp_path: Path) -> None:
    with local.open_fleet(SHAPE, tmp_path, None) as fleet:
        fleet.sleep(fleet.polls(16))  # past the first 30 s tick
        contract(fleet)
        fleet.cp.crash()
        assert fleet.call("GET", "/healthz", as_=None).status == 0


def test_sim_forge_fault_keeps_the_snapshot_and_names_the_class() -> None:
    with sim.open_fleet(SHAPE, Path("."), None) as fleet:
        fleet.forge_fault("unauthorized")
        fleet.release()
        fleet.sleep(fleet.polls(2))
        assert any("HTTP 401" in str(e.detail["reason"]) for e in fleet.history.of(POLL_FAILED))
        served = fleet.call("GET", "/v1/channels/stable", as_=OPERATOR).json()["signed_at"]
        fleet.forge_fault("ok")
        fleet.sleep(fleet.polls(1.5))
        fresh = fleet.call("GET", "/v1/channels/stable", as_=OPERATOR).json()["signed_at"]
        assert fresh > served
        faults = [e.detail["phase"] for e in fleet.history.of(FAULT)]
        assert faults == ["unauthorized", "heal"]
        assert fleet.history.count(CALL) == 2
