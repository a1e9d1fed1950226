"""The real local fleet (issue 5, part 7 and its acceptance list): one control-plane
process and agent processes on 127.0.0.1, each agent a host with its own Nix store in
its own mount namespace, enrolled from a bootstrap token; system closures built by
real `nix-build` and served by a real HTTP binary cache; signed releases on a forge.

One test per acceptance item. The sixth item (bad input: a missing or malformed token
file, trust file or key file, an unreachable CP URL → one line and exit 2, or retries
with backoff, never a traceback) is covered process-level by
tests/agent/test_agent_cli.py and not repeated here; these tests only check that no
process of the fleet ever logged a traceback.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fleet_sim.fleetgen import ChannelDecl
from harness.cpenv import curl
from harness.localfleet import LocalFleet
from nixfleet.core.agent import MIN_CONFIRM_WINDOW_SECS, WATCHDOG_REASON

MakeFleet = Callable[..., LocalFleet]


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[MakeFleet]:
    made: list[LocalFleet] = []

    def make(**kw: Any) -> LocalFleet:
        fleet = LocalFleet.create(tmp_path / f"fleet{len(made)}", **kw)
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        pids = [a.proc for h in fleet.hosts.values() for a in h.agents]
        pids += [p.proc for p in fleet.env.processes]
        fleet.close()
        assert all(p.poll() is not None for p in pids), "a fleet process outlived close()"
        assert fleet.cache.proc is None
        assert fleet.tracebacks() == [], "a fleet process logged a traceback"


# --- helpers ------------------------------------------------------------------------------


def log_time(line: str) -> datetime:
    """The timestamp our log lines start with (`2026-11-23T13:27:24.935Z INFO …`)."""
    return datetime.strptime(line.split(" ", 1)[0], "%Y-%m-%dT%H:%M:%S.%f%z")


def log_line(text: str, needle: str) -> str:
    found = [ln for ln in text.splitlines() if needle in ln]
    assert found, f"no {needle!r} line"
    return found[0]


def pending_confirms(fleet: LocalFleet, rollouts: list[str]) -> list[tuple[str, str, str]]:
    """(hostname, rollout_id, state) of every pending_confirms row of these rollouts."""
    ids = ", ".join(f"'{r}'" for r in rollouts)
    rows = fleet.sql(
        "SELECT hostname, rollout_id, state FROM pending_confirms "
        f"WHERE rollout_id IN ({ids}) ORDER BY hostname, id;"
    )
    return [(r[0], r[1], r[2]) for r in rows]


def report(fleet: LocalFleet, host: str, event: str) -> dict[str, Any]:
    rows = fleet.sql(
        f"SELECT report_json FROM host_reports WHERE hostname = '{host}' "
        f"AND event_kind = '{event}' ORDER BY id DESC LIMIT 1;"
    )
    assert rows, f"no {event} report from {host}"
    doc: dict[str, Any] = json.loads("|".join(rows[0]))
    return doc


def participation(fleet: LocalFleet, rollout: str, host: str) -> str | None:
    rows = fleet.sql(
        f"SELECT host_state FROM host_rollout_state WHERE rollout_id = '{rollout}' "
        f"AND hostname = '{host}';"
    )
    return rows[0][0] if rows else None


def rollout_state(fleet: LocalFleet, rollout: str) -> str | None:
    rows = fleet.sql(f"SELECT state FROM rollouts WHERE rollout_id = '{rollout}';")
    return rows[0][0] if rows else None


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not true after {timeout} s")


# --- 1. enrol, converge twice, no ghost loop --------------------------------------------------


def test_five_hosts_enrol_then_converge_on_r1_and_r2_without_a_ghost_loop(
    make_fleet: MakeFleet,
) -> None:
    fleet = make_fleet(hosts=5)
    names = fleet.names
    assert names == ["h1", "h2", "h3", "h4", "h5"]
    # Enrolled through /v1/enroll from their bootstrap tokens (no pre-issued certs).
    for n in names:
        h = fleet.host(n)
        assert h.enrolled()
        assert f"enrolled cn=agent-{n}.fleet.test" in h.agent_log()
        assert len(fleet.cp_lines("enrolled host=", n)) == 1
    assert fleet.sql("SELECT count(*) FROM token_replay;") == [["5"]]

    r0 = fleet.release_of(0)
    r1 = fleet.release(1)
    fleet.wait_converged(1, timeout=60)
    r2 = fleet.release(2)
    fleet.wait_converged(2, timeout=60)

    rid1, rid2 = r1.rollout_of("h1"), r2.rollout_of("h1")
    for n in names:
        h = fleet.host(n)
        # The full store basename, equal to the declared one (seed 000).
        assert h.current_basename() == r2.basename(n)
        assert h.profile_target() == r2.basename(n)
        # One profile generation per release on top of the installed one.
        assert [(g.number, g.basename) for g in h.generations()] == [
            (1, r0.basename(n)),
            (2, r1.basename(n)),
            (3, r2.basename(n)),
        ]
        assert h.current_generation() == 3
    # One confirmed row per host per release.
    expected = [(n, rid, "confirmed") for n in names for rid in (rid1, rid2)]
    assert pending_confirms(fleet, [rid1, rid2]) == expected

    # No ghost loop: five more checkins each, no new dispatch, no new row, no new switch.
    dispatches = len(fleet.cp_lines("dispatch: target issued"))
    assert dispatches == 10
    fleet.wait_checkins_all(5)
    assert len(fleet.cp_lines("dispatch: target issued")) == dispatches
    assert pending_confirms(fleet, [rid1, rid2]) == expected
    assert fleet.sql("SELECT count(*) FROM pending_confirms WHERE state != 'confirmed';") == [["0"]]
    for n in names:
        h = fleet.host(n)
        for release in (r1, r2):
            assert len(h.activations(release.basename(n))) == 1
            assert len(h.activations(release.basename(n), event="ok")) == 1
        assert "rollback reason=" not in h.agent_log()
        assert h.agent.count("confirm answered status=204") == 2
        last = [ln for ln in h.agent_log().splitlines() if "checkin ok" in ln][-1]
        assert f"current={r2.basename(n)} target=- " in last
    # The CP agrees: every host converged on the declared closure.
    view = curl(fleet.env.curl("/v1/hosts", cert=fleet.env.operator()))
    assert view.status == 200
    hosts = {e["hostname"]: e for e in view.json()["hosts"]}
    for n in names:
        assert hosts[n]["currentClosureHash"] == r2.basename(n)
        assert hosts[n]["converged"] is True


# --- 2. a failing switch: rollback, reports, rollback-and-halt ----------------------------------


def test_failed_switch_rolls_back_reports_and_halts_the_rollout(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(hosts=2)
    r0 = fleet.release_of(0)
    r1 = fleet.release(1, failing={"h1"}, on_health_failure="rollback-and-halt")
    rid = r1.rollout_of("h1")
    h1 = fleet.host("h1")

    kinds = fleet.wait_report("h1", "rollback-triggered", timeout=60)
    assert kinds == ["activation-started", "activation-failed", "rollback-triggered"]
    failed = report(fleet, "h1", "activation-failed")
    assert failed["details"]["phase"] == "switch-exit"
    assert failed["details"]["exit_code"] == 4
    assert "closure built to fail" in failed["details"]["stderr_tail"]
    rolled = report(fleet, "h1", "rollback-triggered")
    assert rolled["details"]["reason"] == "activation-failed: switch-exit"
    assert failed["rollout"] == rolled["rollout"] == rid
    signed = fleet.sql(
        "SELECT event_kind, signature_status FROM host_reports WHERE hostname = 'h1' "
        "AND event_kind != 'activation-started' ORDER BY id;"
    )
    assert signed == [["activation-failed", "verified"], ["rollback-triggered", "verified"]]

    # Back on the previous generation: the profile and the running system.
    assert h1.current_basename() == r0.basename("h1")
    assert h1.profile_target() == r0.basename("h1")
    assert [(g.number, g.basename) for g in h1.generations()] == [
        (1, r0.basename("h1")),
        (2, r1.basename("h1")),
    ]
    assert h1.current_generation() == 1
    assert len(h1.activations(r1.basename("h1"), event="failed")) == 1
    assert len(h1.activations(r0.basename("h1"), event="ok")) == 2  # provision + rollback

    # The CP marks it, and the rollback-and-halt policy halts the rollout.
    assert participation(fleet, rid, "h1") == "Reverted"
    assert fleet.sql(
        f"SELECT state FROM pending_confirms WHERE hostname = 'h1' AND rollout_id = '{rid}';"
    ) == [["rolled-back"]]
    wait_for(lambda: rollout_state(fleet, rid) == "Halted", 15, "rollout halted")
    assert fleet.cp_lines(f"reconcile: halt_rollout rollout={rid}")

    # Nothing is dispatched to h1 again; it does not loop.
    fleet.wait_checkins("h1", 3)
    assert len(fleet.cp_lines("dispatch: target issued", "h1")) == 1
    assert len(h1.activations(r1.basename("h1"))) == 1
    h2 = fleet.host("h2")
    assert "rollback reason=" not in h2.agent_log()


# --- 3. magic rollback: the watchdog, and orphan recovery after a CP wipe -----------------------


def test_cp_stopped_after_dispatch_the_agent_rolls_back_at_the_deadline(
    make_fleet: MakeFleet,
) -> None:
    window = MIN_CONFIRM_WINDOW_SECS
    fleet = make_fleet(hosts=1, confirm_deadline_secs=window)
    h = fleet.host("h1")
    r0 = fleet.release_of(0)
    # The switch takes 2 s: the CP is gone before the agent can confirm.
    r1 = fleet.release(1, switch_delay_secs=2)
    h.agent.wait_log("report sent event=activation-started", timeout=30)
    fleet.stop_cp()
    h.agent.wait_log(f"rollback reason={WATCHDOG_REASON}", timeout=window + 10)
    h.agent.wait_log("rollback done", timeout=20)

    log = h.agent_log()
    received = log_time(log_line(log, f"target={r1.basename('h1')}"))
    fired = log_time(log_line(log, f"rollback reason={WATCHDOG_REASON}"))
    assert "confirm failed" in log
    # At the agent's own deadline (received + confirm window), not before, not much after.
    assert timedelta(seconds=window) <= fired - received < timedelta(seconds=window + 3)
    assert len(h.activations(r1.basename("h1"), event="ok")) == 1  # it did switch
    assert h.current_basename() == r0.basename("h1")
    assert h.current_generation() == 1
    assert h.last_dispatched() is None

    # The CP comes back (same DB): the kept report arrives and the CP marks the host.
    fleet.start_cp()
    fleet.wait_report("h1", "rollback-triggered", timeout=30)
    assert report(fleet, "h1", "rollback-triggered")["details"]["reason"] == WATCHDOG_REASON
    rid = r1.rollout_of("h1")
    assert participation(fleet, rid, "h1") == "Reverted"
    assert fleet.sql(
        f"SELECT state FROM pending_confirms WHERE hostname = 'h1' AND rollout_id = '{rid}';"
    ) == [["rolled-back"]]


def test_cp_wiped_and_restarted_mid_confirm_answers_204_by_orphan_recovery(
    make_fleet: MakeFleet,
) -> None:
    fleet = make_fleet(hosts=1)
    h = fleet.host("h1")
    r0 = fleet.release_of(0)
    # A 6 s switch: the CP is stopped, wiped and restarted while it runs (seed 001).
    r1 = fleet.release(1, switch_delay_secs=6)
    rid = r1.rollout_of("h1")
    h.agent.wait_log(f"switch closure={r1.basename('h1')}", timeout=30)
    assert len(fleet.cp_lines("dispatch: target issued", "h1")) == 1
    fleet.stop_cp()
    fleet.wipe_cp_db()
    fleet.start_cp()
    # The wipe landed between dispatch and confirm.
    assert h.current_basename() == r0.basename("h1")
    assert fleet.sql("SELECT count(*) FROM pending_confirms;") == [["0"]]
    assert h.agent.count("confirm answered") == 0

    h.agent.wait_log("confirm answered status=204", timeout=30)
    fleet.wait_converged(1, timeout=15)
    before, after = fleet.env.processes
    assert after.lines(f"confirm received (orphan recovered) rollout={rid}")
    assert before.lines("confirm received") == []
    # Answered at the first attempt, by the wiped CP: no failed confirm, no retry.
    assert h.agent.count("confirm answered") == 1
    assert h.agent.count("confirm failed") == 0
    assert "rollback reason=" not in h.agent_log()
    assert h.current_basename() == r1.basename("h1")
    assert [g.basename for g in h.generations()] == [r0.basename("h1"), r1.basename("h1")]
    assert len(h.activations(r1.basename("h1"))) == 1
    assert len(h.activations(r0.basename("h1"))) == 1  # the provisioning switch only
    assert pending_confirms(fleet, [rid]) == [("h1", rid, "confirmed")]
    # Settled: further checkins dispatch nothing and roll nothing back.
    fleet.wait_checkins("h1", 3)
    assert fleet.env.processes[-1].lines("dispatch: target issued") == []
    assert "rollback reason=" not in h.agent_log()


# --- 4. refusals: a closure signed by an unknown key, a stale target ---------------------------


def test_unknown_cache_key_and_stale_target_are_refused(make_fleet: MakeFleet) -> None:
    now = datetime.now(UTC)
    # h1 on `stable` (30-day freshness window), h2 on `edge` (10 minutes). The
    # installed release is older than the one under test (a CP keeps the newer).
    fleet = make_fleet(hosts=2, channels={"h2": "edge"}, signed_at=now - timedelta(hours=1))
    r0 = fleet.release_of(0)
    # Signed 30 min ago: fresh for the CP (--freshness-window-secs, 30 days) and for
    # rollout manifests (1 h), stale for the `edge` channel. h1's closure is signed
    # only by a cache key no host trusts.
    r1 = fleet.release(
        1,
        unknown_key={"h1"},
        signed_at=now - timedelta(minutes=30),
        channels={"stable": ChannelDecl(), "edge": ChannelDecl(freshness_window_minutes=10)},
    )
    assert fleet.cache.signers(r1.closures["h1"]) == ["unknown-cache-1"]

    fleet.wait_report("h1", "closure-signature-mismatch", timeout=60)
    fleet.wait_report("h2", "stale-target", timeout=60)
    mismatch = report(fleet, "h1", "closure-signature-mismatch")
    assert mismatch["details"]["closure_hash"] == r1.basename("h1")
    assert "is not signed by any of the keys" in mismatch["details"]["stderr_tail"]
    stale = report(fleet, "h2", "stale-target")
    assert stale["details"]["closure_hash"] == r1.basename("h2")
    assert stale["details"]["freshness_window_secs"] == 600
    assert stale["details"]["age_secs"] >= 30 * 60
    assert fleet.report_kinds("h1")[:2] == ["activation-started", "closure-signature-mismatch"]
    assert set(fleet.report_kinds("h2")) == {"stale-target"}

    # Neither was activated; neither closure entered its host's store.
    fleet.wait_checkins("h1", 2)
    fleet.wait_checkins("h2", 2)
    for n in ("h1", "h2"):
        h = fleet.host(n)
        assert h.current_basename() == r0.basename(n)
        assert [g.basename for g in h.generations()] == [r0.basename(n)]
        assert h.activations(r1.basename(n), event="begin") == []
        assert not h.root.is_valid(r1.closures[n])
    assert "fetch closure=" not in fleet.host("h2").agent_log()  # refused before fetching


# --- 5. SIGKILL mid-activation -------------------------------------------------------------------


def test_sigkill_mid_activation_then_restart_converges_without_a_second_activation(
    make_fleet: MakeFleet,
) -> None:
    fleet = make_fleet(hosts=1)
    h = fleet.host("h1")
    r0 = fleet.release_of(0)

    # (a) Restarted after the detached switch finished: boot recovery confirms.
    r1 = fleet.release(1, switch_delay_secs=2)
    t1 = r1.basename("h1")
    wait_for(lambda: h.activations(t1), 30, "the switch running")
    assert h.switch_running()
    assert fleet.kill_agent("h1", signal.SIGKILL) == -signal.SIGKILL
    dispatched = h.last_dispatched()
    assert dispatched is not None and dispatched["closureHash"] == t1
    # The switch runs on without the agent (its own session), as a transient unit would.
    wait_for(lambda: h.activations(t1, event="ok"), 15, "the switch finished")
    assert h.current_basename() == t1
    again = fleet.start_agent("h1")
    again.wait_log("confirm answered status=204", timeout=30)
    fleet.wait_converged(1, timeout=15)
    assert "activate closure=" not in again.log()
    rid1 = r1.rollout_of("h1")
    assert pending_confirms(fleet, [rid1]) == [("h1", rid1, "confirmed")]

    # (b) Restarted while the switch still runs: boot recovery sees the old system and
    # drops its record. Whichever comes first: the CP offers the pending target again
    # and the new agent waits for the running switch and adopts it (issue 9 #12), or the
    # switch ends first and the CP takes the moved link as the lost confirm (H6). Never
    # a second switch, a failure or a rollback.
    r2 = fleet.release(2, switch_delay_secs=3)
    t2 = r2.basename("h1")
    wait_for(lambda: h.activations(t2), 30, "the second switch running")
    fleet.kill_agent("h1", signal.SIGKILL)
    third = fleet.start_agent("h1")
    assert h.switch_running() and h.current_basename() == t1
    fleet.wait_converged(2, timeout=20)
    issued = fleet.cp_lines("dispatch: target issued", "h1")[-1]
    assert f"target_closure={t2}" in issued
    rid2 = r2.rollout_of("h1")
    wait_for(lambda: pending_confirms(fleet, [rid2]) == [("h1", rid2, "confirmed")], 40,
             "the second dispatch confirmed")  # fmt: skip
    if "activate closure=" in third.log():
        assert "switch: adopting a finished switch" in third.log()
        reoffers = fleet.cp_lines("dispatch: target re-offered", "h1")
        assert any(f"rollout={rid2}" in line for line in reoffers), reoffers
    else:
        assert fleet.cp_lines(f"confirm received (revived at checkin) rollout={rid2}", "h1")
    assert "SwitchFailed" not in third.log()

    # One activation of each target, ever; no rollback; one generation per release.
    assert len(h.activations(t1)) == 1
    assert len(h.activations(t2)) == 1
    assert len(h.activations(r0.basename("h1"))) == 1  # the provisioning switch only
    assert "rollback reason=" not in h.agent_log()
    assert [g.basename for g in h.generations()] == [r0.basename("h1"), t1, t2]
    assert h.current_basename() == t2
    assert len(fleet.cp_lines("dispatch: target issued", "h1")) == 2
