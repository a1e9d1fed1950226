"""`Fleet.publish` (signed when, channel window, tampered), the `poll-failed` history
event, and `Shape.release_key` / `Shape.installed_signed_ago` on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends import local, sim
from harness.fleet import OPERATOR, POLL_FAILED, SNAPSHOT, Fleet, Shape
from harness.refusals import rollout_of
from nixfleet.core.signing import P256_ORDER

SHAPE = Shape(hosts=3, local_hosts=1, seed=3, installed_signed_ago=3600)


def served(fleet: Fleet, release: int) -> bool:
    return any(e.detail.get("release") == release for e in fleet.history.of(SNAPSHOT))


def contract(fleet: Fleet) -> None:
    bad = fleet.publish(tamper="artifact-signature")
    fleet.wait_until(lambda: any(fleet.history.of(POLL_FAILED)), fleet.polls(3), "the CP to refuse")
    reasons = [e.detail["reason"] for e in fleet.history.of(POLL_FAILED)]
    assert all(r.startswith("bad-signature:") for r in reasons), reasons
    assert not served(fleet, bad)
    # Signed 10 min ago: newer than the installed release (1 h old), so served.
    old = fleet.publish(signed_at=-600, freshness_window_minutes=120)
    fleet.wait_until(lambda: served(fleet, old), fleet.polls(3), "the CP to serve it")
    channel = fleet.call("GET", "/v1/channels/stable", as_=OPERATOR).json()
    assert channel["freshness_window_minutes"] == 120


def test_sim_publish() -> None:
    with sim.open_fleet(SHAPE, Path("."), None) as fleet:
        contract(fleet)


def test_sim_ecdsa_release_key_signs_high_s_after_the_installed_release() -> None:
    with sim.open_fleet(Shape(hosts=2, seed=4, release_key="ecdsa-p256"), Path("."), None) as f:
        rid = rollout_of(f, f.release())
        f.wait_until(lambda: f.converged(), f.polls(20), "converged")
        sig = f.call("GET", f"/v1/rollouts/{rid}/sig", as_=f.hosts[0]).body
        assert len(sig) == 64 and int.from_bytes(sig[32:], "big") > P256_ORDER // 2


@pytest.mark.slow
def test_local_publish(tmp_path: Path) -> None:
    with local.open_fleet(SHAPE, tmp_path, None) as fleet:
        contract(fleet)
