"""`Shape.channels`, `Shape.channel_edges` and `Fleet.hosts_of`: more channels, their
hosts, an all-at-once one, and the edge in the signed fleet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.backends import local, sim
from harness.fleet import RELEASE, ChannelShape, Fleet, Shape

SHAPE = Shape(
    hosts=3,
    local_hosts=1,
    channels=(ChannelShape(name="canary", hosts=2, local_hosts=1, waves=0),),
    channel_edges=(("canary", "stable"),),
    seed=5,
)


def contract(fleet: Fleet) -> None:
    canary, stable = fleet.hosts_of("canary"), fleet.hosts_of("stable")
    assert canary and all(h.startswith("canary-") for h in canary)
    assert sorted(fleet.hosts) == sorted([*canary, *stable])
    assert [h for w in fleet.waves for h in w] == list(stable)  # `stable`'s waves only
    fleet.release()
    event = list(fleet.history.of(RELEASE))[-1]
    assert set(event.detail["rollouts"]) == {"canary", "stable"}
    assert event.detail["rollout"] == event.detail["rollouts"]["stable"]
    fleet.wait_until(fleet.converged, fleet.polls(20), "both channels to converge")


def test_sim_channels_edges_and_all_at_once() -> None:
    with sim.open_fleet(SHAPE, Path("."), None) as fleet:
        contract(fleet)
        latest = fleet.world.forge.latest
        assert latest is not None
        doc = json.loads(latest.raw)
        assert doc["waves"]["canary"] == []
        assert doc["channelEdges"] == [{"gates": "canary", "gated": "stable"}]
        assert {h["channel"] for h in doc["hosts"].values()} == {"canary", "stable"}


def test_sim_default_shape_is_one_stable_channel() -> None:
    with sim.open_fleet(Shape(hosts=2, seed=5), Path("."), None) as fleet:
        assert fleet.hosts_of("stable") == fleet.hosts
        fleet.release()
        assert "rollouts" not in list(fleet.history.of(RELEASE))[-1].detail


@pytest.mark.slow
def test_local_channels_edges_and_all_at_once(tmp_path: Path) -> None:
    with local.open_fleet(SHAPE, tmp_path, None) as fleet:
        contract(fleet)
        doc = json.loads(fleet.local.release_of(1).raw)
        assert doc["waves"]["canary"] == []
        assert doc["channelEdges"] == [{"gates": "canary", "gated": "stable"}]
