"""The simulator's acceptance runs: thousand-host fleets on the production code."""

from __future__ import annotations

from collections import Counter

import pytest

from fleet_sim.checkers import (
    CLEAN_RUN,
    DEFAULT,
    all_converged,
    checkins_after_restart,
    passed,
    run_checkers,
)
from fleet_sim.faults import ActivationFailures, CpWipe, HealthFailures, Partition
from fleet_sim.world import SimConfig, World
from harness.mutants import injected

pytestmark = pytest.mark.slow


def _run(**kw: object) -> World:
    return World(SimConfig(**kw)).run()  # type: ignore[arg-type]


def test_thousand_hosts_three_waves_clean_release_is_repeatable() -> None:
    first = _run(hosts=1000, waves=3, poll_secs=60, seed=11)
    verdicts = run_checkers(first.as_run(), CLEAN_RUN)
    assert passed(verdicts), verdicts
    activations = Counter(str(op.host) for op in first.history.of("activate"))
    assert len(activations) == 1000 and set(activations.values()) == {1}
    again = _run(hosts=1000, waves=3, poll_secs=60, seed=11)
    assert again.history.trace_hash() == first.history.trace_hash()
    other = _run(hosts=1000, waves=3, poll_secs=60, seed=12)
    assert other.history.trace_hash() != first.history.trace_hash()


def _participation(world: World) -> Counter[str]:
    assert world.cp.service is not None and world.cp.service.store is not None
    rid = world.rollout_id
    assert rid is not None
    return Counter(r.host_state for r in world.cp.service.store.participation_rows(rid))


def _rollout_state(world: World) -> str:
    assert world.cp.service is not None and world.cp.service.store is not None
    assert world.rollout_id is not None
    ro = world.cp.service.store.rollout(world.rollout_id)
    assert ro is not None
    return ro.state


def test_health_failures_rollback_and_halt_halts_and_rolls_the_failed_hosts_back() -> None:
    world = _run(hosts=1000, waves=3, seed=21, policy="rollback-and-halt",
                 faults=[HealthFailures(at=0, hosts=0.1)])
    assert _rollout_state(world) == "Halted"
    states = _participation(world)
    assert states["Reverted"] > 0 and states["Failed"] == 0
    signalled = {op.host for op in world.history.of("checkin") if op.detail["rollback"]}
    rolled = {op.host for op in world.history.of("rollback")}
    assert signalled and signalled <= rolled
    for host in rolled:
        assert world.hosts[str(host)].current != world.target(str(host))
    assert passed(run_checkers(world.as_run(), DEFAULT)), run_checkers(world.as_run(), DEFAULT)


def test_health_failures_halt_halts_without_rollback() -> None:
    world = _run(hosts=1000, waves=3, seed=21, policy="halt",
                 faults=[HealthFailures(at=0, hosts=0.1)])
    assert _rollout_state(world) == "Halted"
    states = _participation(world)
    assert states["Failed"] > 0 and states["Reverted"] == 0
    assert world.history.count("rollback") == 0
    assert not any(op.detail["rollback"] for op in world.history.of("checkin"))


@pytest.mark.parametrize("policy", ["rollback-and-halt", "halt"])
def test_switch_failures_halt_and_the_agents_roll_back_locally(policy: str) -> None:
    world = _run(hosts=1000, waves=3, seed=22, policy=policy,
                 faults=[ActivationFailures(at=0, hosts=0.1)])
    assert _rollout_state(world) == "Halted"
    failed = {op.host for op in world.history.of("activation-failed")}
    rolled = {op.host for op in world.history.of("rollback")}
    assert failed and failed == rolled
    assert _participation(world)["Reverted"] == len(failed)


def _in_flight(world: World) -> int:
    """Hosts between the start of their switch and their confirm."""
    return world.history.count("activate") - world.history.count("confirm")


def test_cp_db_wipe_mid_rollout_recovers() -> None:
    """Seed 001 on a simulated fleet: all hosts back within 120 s at 60 s polling,
    no confirm in flight is answered 410, the rollout resumes and converges."""
    wipe = CpWipe(when=lambda w: _in_flight(w) >= 20, check_every=1.0, duration=15)
    world = _run(hosts=1000, waves=3, seed=31, soak_minutes=2, faults=[wipe])
    wiped_at = next(op.t for op in world.history.of("cp-wipe"))
    late_confirms = [op for op in world.history.of("confirm") if op.t > wiped_at]
    assert late_confirms, "no confirm crossed the wipe: the scenario proved nothing"
    verdicts = run_checkers(world.as_run(), [*DEFAULT, all_converged, checkins_after_restart(2)])
    assert passed(verdicts), verdicts
    assert {op.detail["status"] for op in late_confirms} == {204}


def _stuck_partition() -> SimConfig:
    # 20 % of hosts are cut right after their dispatch: they activate, cannot confirm,
    # roll back by their watchdog; the CP's sweep must expire their rows so they are
    # dispatched again once the partition heals.
    return SimConfig(hosts=100, waves=1, seed=3, duration=3600,
                     faults=[Partition(at=125, duration=900, hosts=0.2)])


def test_partitioned_hosts_converge_after_the_sweep_expires_their_rows() -> None:
    world = World(_stuck_partition()).run()
    assert passed(run_checkers(world.as_run(), [*DEFAULT, all_converged]))


def test_reintroduced_datetime_compare_bug_is_caught() -> None:
    """Seed 000 rollback timer, reinjected in the real CP store's sweep SQL."""
    with injected("sweep-raw-text-compare"):
        world = World(_stuck_partition()).run()
    verdicts = {v.name: v for v in run_checkers(world.as_run(), [*DEFAULT, all_converged])}
    assert verdicts["all-converged"].ok is False
    assert verdicts["rollout-finished"].ok is False


def test_target_lost_in_a_cp_wipe_is_dispatched_again() -> None:
    """Found by the simulator: a host got its target just before the wipe, its manifest
    fetch failed (CP down) and, with no dispatch row left after the wipe, the CP held
    it forever on its `fetch-failed` outcome."""
    world = _run(hosts=1000, waves=3, seed=1, faults=[CpWipe(at=480, duration=20)])
    lost = {str(op.host) for op in world.history.of("report")
            if op.detail.get("event") == "manifest-missing"}
    assert lost, "no target was lost in the wipe: the scenario proved nothing"
    assert passed(run_checkers(world.as_run(), [*DEFAULT, all_converged]))
