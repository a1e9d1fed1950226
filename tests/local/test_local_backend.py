"""The `local` backend (issue 10, item 3): every verb of the Fleet facade on real
processes — a CP and agents with their own Nix stores — and the backend-neutral
history read from their logs.

One fleet per test (each costs a few seconds to build and enrol); polls are 2 s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.backends.local import LocalFleetBackend, open_fleet
from harness.fleet import (
    ACTIVATE,
    ACTIVATION_FAILED,
    AGENT_KILL,
    AGENT_START,
    CHECKIN,
    CONFIRM,
    CP_CRASH,
    CP_START,
    CP_STOP,
    CP_WIPE,
    DISPATCH,
    FAULT,
    RELEASE,
    ROLLBACK,
    SNAPSHOT,
    CommandFailed,
    Event,
    NotAvailable,
    Shape,
)

OpenFleet = Callable[..., LocalFleetBackend]


@pytest.fixture
def open_local(tmp_path: Path) -> Iterator[OpenFleet]:
    with contextlib.ExitStack() as stack:
        fleets: list[LocalFleetBackend] = []

        def make(shape: Shape, mutant: str | None = None) -> LocalFleetBackend:
            where = tmp_path / f"fleet{len(fleets)}"
            fleet = stack.enter_context(open_fleet(shape, where, mutant))
            fleets.append(fleet)
            return fleet

        yield make
        procs = [a.proc for f in fleets for h in f.local.hosts.values() for a in h.agents]
        procs += [p.proc for f in fleets for p in f.local.env.processes]
        tracebacks = [f.local.tracebacks() for f in fleets]
    assert all(p.poll() is not None for p in procs), "a fleet process outlived the fleet"
    assert not any(tracebacks), f"a fleet process logged a traceback: {tracebacks}"


def checkins(fleet: LocalFleetBackend, host: str, after: float = 0.0) -> int:
    return sum(1 for e in fleet.history.of(CHECKIN, host) if e.t >= after)


def all_back(fleet: LocalFleetBackend, after: float) -> Callable[[], bool]:
    return lambda: all(checkins(fleet, h, after=after) > 0 for h in fleet.hosts)


def first(fleet: LocalFleetBackend, kind: str, host: str | None = None, **detail: object) -> Event:
    for e in fleet.history.of(kind, host):
        if all(e.detail.get(k) == v for k, v in detail.items()):
            return e
    raise AssertionError(f"no {kind} {host or ''} {detail} in the history")


# --- a clean release: history, final state, operator -----------------------------------


def test_clean_release_converges_and_its_history_reads_in_order(open_local: OpenFleet) -> None:
    fleet = open_local(Shape(local_hosts=3, waves=2))
    assert fleet.hosts == ["h1", "h2", "h3"]
    assert fleet.waves == [["h1"], ["h2", "h3"]]
    assert fleet.poll_secs == 2.0 and fleet.polls(3) == 6.0
    assert fleet.converged()  # release 0 is installed

    n = fleet.release()
    assert n == 1
    rollout = fleet.local.release_of(1).rollout_of("h1")
    fleet.wait_until(fleet.converged, fleet.polls(15), "converged on release 1")
    fleet.wait_until(lambda: fleet.history.count(CONFIRM) >= 3, fleet.polls(5), "three confirms")
    for h in fleet.hosts:
        assert fleet.current(h) == fleet.target(h) == fleet.local.release_of(1).basename(h)

    history = fleet.history
    assert [e.t for e in history.events] == sorted(e.t for e in history.events)
    boot = first(fleet, CP_START)
    assert boot.detail["boot"] == 1
    assert all(e.t > boot.t for e in history.of(CHECKIN))
    released = first(fleet, RELEASE, release=1)
    assert released.detail["rollout"] == rollout
    served = first(fleet, SNAPSHOT, release=1)
    assert released.t < served.t
    for h in fleet.hosts:
        closure = fleet.target(h)
        dispatched = first(fleet, DISPATCH, h, rollout=rollout, closure=closure)
        activated = first(fleet, ACTIVATE, h, closure=closure)
        confirmed = first(fleet, CONFIRM, h, rollout=rollout, status=204, closure=closure)
        assert served.t < dispatched.t < activated.t < confirmed.t
        assert history.count(DISPATCH, h) == 1  # no ghost loop
    # Waves: the canary first; the second wave only once it was confirmed.
    canary = first(fleet, CONFIRM, "h1", rollout=rollout)
    assert all(first(fleet, DISPATCH, h, rollout=rollout).t > canary.t for h in ("h2", "h3"))
    for kind in (ACTIVATION_FAILED, ROLLBACK, CP_STOP, CP_CRASH, AGENT_KILL):
        assert history.count(kind) == 0, kind
    assert history.count(AGENT_START) == 3

    final = fleet.final()
    assert final.converged() == {"h1", "h2", "h3"}
    assert all(h.reachable for h in final.hosts.values())
    assert final.waves == [["h1"], ["h2", "h3"]]
    assert final.rollout is not None and final.rollout.rollout_id == rollout
    assert set(final.rollout.host_states) == {"h1", "h2", "h3"}
    assert set(final.rollout.host_states.values()) <= {"Healthy", "Soaked", "Converged"}

    # The operator's shell on the CP host: the seeds' commands as written.
    assert (
        fleet.operator("curl -sk https://localhost:$CP_PORT/healthz | jq '.last_tick_at != null'")
        == "true\n"
    )
    rows = fleet.operator(
        "sqlite3 state.db \"SELECT count(*) FROM pending_confirms WHERE state = 'confirmed';\""
    )
    assert int(rows) >= 3
    listed = "grep 'checkin received' \"$CP_LOG\" | awk '{print $NF}' | sort -u"
    assert fleet.operator(listed).split() == ["h1", "h2", "h3"]
    journal = (
        "journalctl -u nixfleet-control-plane.service --since='5 min ago' "
        "| grep 'checkin received' | awk '{print $NF}' | sort -u"
    )
    assert fleet.operator(journal).split() == ["h1", "h2", "h3"]
    signed_at = fleet.operator(
        'curl -sk --cacert "$CA_CERT" --cert "$OPERATOR_CERT" --key "$OPERATOR_KEY" '
        "https://localhost:$CP_PORT/v1/channels/stable | jq -r '.signed_at'"
    )
    assert signed_at.strip() == served.detail["signed_at"]
    with pytest.raises(CommandFailed, match="exited 1"):
        fleet.operator("grep 'no such line' \"$CP_LOG\"")
    assert fleet.cp.sql(f"SELECT state FROM rollouts WHERE rollout_id = '{rollout}'") == [
        (final.rollout.state,)
    ]
    with pytest.raises(NotAvailable):
        fleet.skew_clock("h1", 600)


# --- partition, agent kill and start -----------------------------------------------------


def test_partition_agent_kill_and_start_and_a_slow_activation(
    open_local: OpenFleet,
) -> None:
    fleet = open_local(Shape(local_hosts=2))
    cut_at = fleet.now()
    fleet.partition(["h2"], fleet.polls(3))
    assert not fleet.final().hosts["h2"].reachable
    fleet.sleep(fleet.polls(2.5))
    assert checkins(fleet, "h2", after=cut_at + 0.5) == 0  # cut off
    assert checkins(fleet, "h1", after=cut_at + 0.5) >= 2  # not cut off
    fleet.wait_until(lambda: checkins(fleet, "h2", after=cut_at) > 0, fleet.polls(8), "h2 back")
    healed = first(fleet, FAULT, fault="partition", phase="heal")
    assert healed.t - cut_at == pytest.approx(fleet.polls(3), abs=0.5)
    assert min(e.t for e in fleet.history.of(CHECKIN, "h2") if e.t > cut_at + 0.5) > healed.t
    assert fleet.final().hosts["h2"].reachable

    fleet.kill_agent("h1")
    killed_at = fleet.now()
    assert not fleet.final().hosts["h1"].reachable
    fleet.sleep(fleet.polls(2))
    assert checkins(fleet, "h1", after=killed_at + 0.5) == 0
    fleet.start_agent("h1")
    fleet.wait_until(lambda: checkins(fleet, "h1", after=killed_at) > 0, fleet.polls(3), "h1 back")
    kinds = [e.kind for e in fleet.history.events if e.host == "h1" and e.kind != CHECKIN]
    assert kinds == [AGENT_START, AGENT_KILL, AGENT_START]
    assert fleet.final().hosts["h1"].reachable

    # A slow switch: h2's takes 3 s from the next release on, h1's stays quick.
    fleet.slow_activation(["h2"], 3)
    fleet.release()
    fleet.wait_until(fleet.converged, fleet.polls(15), "converged on release 1")
    fleet.wait_until(lambda: fleet.history.count(CONFIRM) >= 2, fleet.polls(3), "2 confirms")
    took = {
        h: first(fleet, CONFIRM, h, status=204).t - first(fleet, ACTIVATE, h).t for h in fleet.hosts
    }
    assert took["h2"] >= 3 > took["h1"]


# --- the CP: crash, stop, wipe, start; failing and unhealthy releases ------------------------


def test_cp_crash_stop_wipe_start_and_failing_releases(open_local: OpenFleet) -> None:
    fleet = open_local(Shape(local_hosts=2))
    db = fleet.local.db_path

    fleet.cp.crash()
    assert not fleet.cp.running
    fleet.cp.start()
    restarted = fleet.now()
    fleet.wait_until(all_back(fleet, restarted), fleet.polls(4), "every host checking in")

    with pytest.raises(RuntimeError, match="stop the control plane"):
        fleet.cp.wipe()
    fleet.cp.stop()
    fleet.cp.wipe()
    assert not list(db.parent.glob("state.db*"))
    with pytest.raises(NotAvailable):
        fleet.cp.sql("SELECT 1")
    assert fleet.final().rollouts == []
    fleet.cp.start()
    wiped = fleet.now()
    fleet.wait_until(all_back(fleet, wiped), fleet.polls(4), "every host checking in")
    boots = [e for e in fleet.history.events if e.kind.startswith("cp-")]
    assert [(e.kind, e.detail.get("boot")) for e in boots] == [
        (CP_START, 1),
        (CP_CRASH, None),
        (CP_START, 2),
        (CP_STOP, None),
        (CP_WIPE, None),
        (CP_START, 3),
    ]

    # A release whose closure fails its health probe once switched: the host switches,
    # then its `app` probe fails (the CP marks it Failed after --health-failure-secs;
    # harness-rollback-policy follows that through).
    fleet.release(unhealthy=["h2"])
    fleet.wait_until(fleet.converged, fleet.polls(15), "converged on release 1")
    h2 = fleet.local.host("h2").agent
    fleet.wait_until(
        lambda: "health probe name=app kind=exec status=fail" in h2.log(),
        fleet.polls(5),
        "h2's probe failing",
    )
    assert "status=fail" not in fleet.local.host("h1").agent.log()

    # A release whose switch fails on h1: activation-failed, then the agent's rollback.
    n = fleet.release(failing=["h1"])
    closure = fleet.local.release_of(n).basename("h1")
    fleet.wait_until(lambda: fleet.history.count(ROLLBACK, "h1") > 0, fleet.polls(15), "rollback")
    failed = first(fleet, ACTIVATION_FAILED, "h1", closure=closure)
    rolled = first(fleet, ROLLBACK, "h1")
    assert first(fleet, ACTIVATE, "h1", closure=closure).t < failed.t <= rolled.t
    assert rolled.detail["reason"] == "activation-failed: switch-exit"
    fleet.wait_until(
        lambda: fleet.current("h1") == fleet.local.release_of(1).basename("h1"),
        fleet.polls(5),
        "h1 back on release 1",
    )
    assert fleet.final().hosts["h1"].current != fleet.target("h1")


# --- mutants run inside the real processes ---------------------------------------------------


def test_a_mutant_runs_inside_the_agents_and_the_cp(open_local: OpenFleet) -> None:
    """`report-hash-prefix` (seed 000's ghost loop) is in both processes: the agent
    sends only the 32-char hash, and the CP, given the seed's lax parser back, takes it
    (without the mutant it would refuse the short form with a 400)."""
    fleet = open_local(Shape(local_hosts=1), mutant="report-hash-prefix")
    h1 = fleet.local.host("h1")
    for pid in (h1.agent.pid, fleet.local.env.processes[-1].proc.pid):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"--mutant") + 1] == b"report-hash-prefix"
    current = fleet.current("h1")
    assert current is not None
    prefix = current.split("-", 1)[0]
    fleet.wait_until(
        lambda: fleet.history.count(CHECKIN, "h1") >= 2,
        fleet.polls(4),
        "two checkins received",
    )
    assert {e.detail["closure"] for e in fleet.history.of(CHECKIN, "h1")} == {prefix}
    assert "is not a store basename" not in h1.agent.log()
