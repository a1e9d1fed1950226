"""A host whose clock runs 10 minutes slow (issue 9 #13), on the simulator: it refuses
the future-dated manifest, the CP sees and logs its skew, and once its clock is fixed
the same rollout reaches it (a `verify-failed` outcome used to hold it forever)."""

from __future__ import annotations

import logging

import pytest

from fleet_sim.checkers import all_converged
from fleet_sim.faults import ClockSkew
from fleet_sim.world import SimConfig, World


def test_a_slow_clock_delays_the_rollout_only_until_it_is_fixed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="nixfleet.cp")
    slow = ClockSkew(at=0, hosts=["host-1"], skew_secs=-600, duration=600)
    world = World(SimConfig(hosts=3, waves=1, seed=5, faults=[slow])).run()

    assert all_converged(world.as_run()).ok, all_converged(world.as_run())
    rid = world.rollout_id
    ops = [op for op in world.history.events if op.host == "host-1"]
    kinds = [(op.kind, op.detail.get("event")) for op in ops if op.kind in ("report", "activate")]
    refused = kinds.index(("report", "manifest-verify-failed"))
    assert kinds[refused + 1 :].count(("activate", None)) == 1  # after the clock was fixed
    assert {op.detail["rollout"] for op in ops if op.kind == "dispatch"} == {rid}

    # Ten checkins 600 s behind: one warning (rate-limited per host, 10 minutes).
    [warned] = [r.getMessage() for r in caplog.records if "clock skew:" in r.getMessage()]
    assert warned.startswith("clock skew: agent clock is 600 s behind the control plane's")
    assert warned.endswith("skew_secs=-600 host=host-1")
