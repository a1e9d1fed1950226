"""The agent process end to end: a scripted mTLS CP, a signed HTTP binary cache, real
nix, a real profile, fake system closures whose switch drives the host's link.

Each test releases one target and checks what the host and the CP see: activation
and confirm, rollback after a failed switch, after a 410 and by the watchdog, the
refusal of a stale target and of a closure signed by an unknown cache key, a cache
outage, and a SIGKILL in the middle of a switch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from agent_testlib import (
    AgentProc,
    BinaryCache,
    FakeCp,
    FakeSystems,
    Host,
    attestation_ok,
    basename,
    delete_from_store,
    generations,
    host_public_key,
    nix_env,
    now,
    profile_target,
    report_signature_ok,
    set_profile,
    signed_manifest,
    start_agent,
    target,
    wait_until,
)

from fleet_sim.fleetgen import ReleaseKit
from harness.pki import Pki
from nixfleet.core.agent import CP_410_REASON, WATCHDOG_REASON

pytestmark = pytest.mark.nix


@dataclass
class Rig:
    dir: Path
    env: dict[str, str]
    pki: Pki
    kit: ReleaseKit
    cache: BinaryCache
    cp: FakeCp
    host: Host
    systems: FakeSystems
    gen1: str
    agents: list[AgentProc] = field(default_factory=list)

    def closure(self, gen: str, *, rogue: Path | None = None, **kw: Any) -> str:
        """Build a system, push it signed to the cache, drop it from the local store."""
        path = self.systems.build(gen, **kw)
        self.cache.push(path, secret=rogue)
        delete_from_store(path, self.env)
        return path

    def release(self, path: str, *, signed_at: Any = None, **kw: Any) -> str:
        signed = signed_at or now()
        rid, raw, sig = signed_manifest(self.kit, {"h1": basename(path)}, signed_at=signed)
        self.cp.manifests[rid] = (raw, sig)
        self.cp.dispatch(target(rid, basename(path), signed_at=signed, **kw))
        return rid

    def start(self) -> AgentProc:
        argv = self.host.agent_args(
            cp_url=self.cp.url(), pki=self.pki, trust=self.dir / "trust.json", poll=1,
            extra=["--nix-substituter", self.cache.http_url],
        )  # fmt: skip
        agent = start_agent(argv, self.env, self.dir / f"agent-{len(self.agents)}.log")
        self.agents.append(agent)
        return agent

    def wait_report(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        wait_until(lambda: event in self.cp.events(), timeout, f"{event} report")
        return self.cp.report(event)

    def link(self) -> str:
        return os.readlink(self.host.link)

    def signed(self, report: dict[str, Any]) -> bool:
        return report_signature_ok(report, host_public_key(self.pki, "h1"))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    env = nix_env(tmp_path)
    pki = Pki.create(tmp_path / "pki")
    kit = ReleaseKit()
    cache = BinaryCache(tmp_path / "cache", env)
    # The agent trusts the cache key from trust.json `cacheKeys` (no --trusted-public-key).
    (tmp_path / "trust.json").write_text(json.dumps(kit.trust(cache_keys=[cache.public_key])))
    cache.serve()
    cp = FakeCp(pki=pki).start()
    host = Host(dir=tmp_path / "h1", name="h1")
    host.dir.mkdir()
    host.cert = pki.issue_agent("h1")
    systems = FakeSystems(dir=tmp_path / "systems", link=host.link, env=env)
    gen1 = systems.add("1")
    set_profile(host.profile, gen1, env)
    os.symlink(gen1, host.link)
    r = Rig(dir=tmp_path, env=env, pki=pki, kit=kit, cache=cache, cp=cp, host=host,
            systems=systems, gen1=gen1)  # fmt: skip
    try:
        yield r
    finally:
        for agent in r.agents:
            agent.stop()
        cp.stop()
        cache.stop()
        for agent in r.agents:
            assert "Traceback" not in agent.log(), agent.log()


def test_fetch_activate_confirm_and_attest(rig: Rig) -> None:
    gen2 = rig.closure("2")
    os.symlink(rig.gen1, rig.host.dir / "booted-system")
    (rig.host.dir / "health-checks.json").write_text(json.dumps({
        "mode": "permissive",
        "tcp": [{"name": "cp-port", "port": rig.cp.port}],
        "exec": [{"name": "false", "command": ["false"]}],
    }))  # fmt: skip
    agent = rig.start()
    agent.wait_log("checkin ok")
    rid = rig.release(gen2)
    wait_until(lambda: rig.cp.confirms, 60, "a confirm")
    confirm = rig.cp.confirms[0]
    assert confirm["rollout"] == rid and confirm["wave"] == 0
    assert confirm["generation"]["closureHash"] == basename(gen2)
    assert rig.link() == gen2
    assert profile_target(rig.host.profile) == gen2
    assert generations(rig.host.profile) == [1, 2]
    assert rig.cp.events()[:1] == ["activation-started"]
    wait_until(lambda: not (rig.host.state / "last_dispatched").exists(), 10, "confirm recorded")
    first, stamp = (rig.host.state / "last_confirmed_at").read_text().splitlines()
    assert first == basename(gen2)
    assert (rig.host.state / "rollouts" / f"{rid}.json").read_bytes() == rig.cp.manifests[rid][0]

    # Later checkins report the full basename and attest the confirm with the host key.
    seen = len(rig.cp.checkins)
    wait_until(lambda: len(rig.cp.checkins) >= seen + 3, 30, "three more checkins")
    last = rig.cp.checkins[-1]
    assert last["currentGeneration"]["closureHash"] == basename(gen2)
    assert last["lastEvaluatedTarget"]["rolloutId"] == rid
    assert last["lastConfirmedAt"] == stamp
    assert attestation_ok(last, host_public_key(rig.pki, "h1"))
    assert last["uptimeSecs"] is None or last["uptimeSecs"] >= 0
    assert rig.systems.calls().count(f"{gen2} switch") == 1
    assert len(rig.cp.confirms) == 1
    # Installed but not what was booted: the pending generation.
    assert last["pendingGeneration"] == {"closureHash": basename(gen2)}
    assert last["healthCheckMode"] == "permissive"
    probes = {p["name"]: p for p in last["healthProbes"]}
    assert probes["cp-port"]["status"] == "pass" and probes["cp-port"]["kind"] == "tcp"
    assert probes["false"]["status"] == "fail" and probes["false"]["failureReason"] == "exit 1"
    # Agents always send the protocol header, and checkins reuse one connection.
    assert rig.cp.protocol_headers == {"1"}
    assert len(set(rig.cp.checkin_ports)) == 1


def test_probe_results_are_not_carried_across_a_switch(rig: Rig) -> None:
    """A result taken on the previous system must not vouch for the new one: with a 30 s
    probe interval the first checkins after the switch used to report the old `pass`,
    and a CP with no soak converged a host whose new closure fails its probe."""
    gen2 = rig.closure("2")
    (rig.host.dir / "health-checks.json").write_text(json.dumps({
        "exec": [{"name": "app", "intervalSeconds": 30, "command": [
            "sh", "-c", f'[ "$(readlink {rig.host.link})" != {gen2} ]']}],
    }))  # fmt: skip
    agent = rig.start()
    wait_until(
        lambda: any(p["status"] == "pass" for c in rig.cp.checkins for p in c["healthProbes"]),
        30,
        "a passing probe on the first system",
    )
    rig.release(gen2)
    wait_until(lambda: rig.cp.confirms, 60, "a confirm")
    seen = len(rig.cp.checkins)
    wait_until(lambda: len(rig.cp.checkins) >= seen + 3, 30, "three more checkins")
    after = [c["healthProbes"][0]["status"] for c in rig.cp.checkins[seen:]]
    assert "pass" not in after, after
    assert after[-1] == "fail", after
    assert agent.proc.poll() is None


def test_failed_switch_rolls_back_and_reports(rig: Rig) -> None:
    bad = rig.closure("2", fail=True)
    rig.start()
    rid = rig.release(bad)
    rolled = rig.wait_report("rollback-triggered", timeout=60)
    failed = rig.cp.report("activation-failed")
    assert rig.cp.events() == ["activation-started", "activation-failed", "rollback-triggered"]
    assert failed["details"]["phase"] == "switch-exit"
    assert failed["details"]["exit_code"] == 3
    assert "foo.service failed" in failed["details"]["stderr_tail"]
    assert rolled["details"]["reason"] == "activation-failed: switch-exit"
    assert failed["rollout"] == rolled["rollout"] == rid
    assert rig.signed(failed) and rig.signed(rolled)
    assert not rig.signed(rig.cp.report("activation-started"))  # not a signed event
    assert rig.link() == rig.gen1
    assert profile_target(rig.host.profile) == rig.gen1
    assert rig.systems.calls() == [f"{bad} switch", f"{rig.gen1} switch"]
    assert rig.cp.confirms == []
    failed_file = json.loads((rig.host.state / "last_failed_closure").read_text())
    assert failed_file["closureHash"] == basename(bad) and failed_file["failureCount"] == 1


def test_410_rolls_back(rig: Rig) -> None:
    gen2 = rig.closure("2")
    rig.cp.confirm_status = 410
    rig.start()
    rig.release(gen2)
    rolled = rig.wait_report("rollback-triggered", timeout=60)
    assert rolled["details"]["reason"] == CP_410_REASON
    assert rig.signed(rolled)
    assert rig.link() == rig.gen1
    assert rig.systems.calls() == [f"{gen2} switch", f"{rig.gen1} switch"]


@pytest.mark.parametrize("status", [503, 0], ids=["http-503", "no-answer"])
def test_watchdog_rolls_back_when_the_cp_never_confirms(rig: Rig, status: int) -> None:
    gen2 = rig.closure("2")
    rig.cp.confirm_status = status
    agent = rig.start()
    agent.wait_log("checkin ok")
    released = time.monotonic()
    rig.release(gen2, confirm_window_secs=3)
    agent.wait_log("confirm answered status=503" if status else "confirm failed", timeout=60)
    assert rig.link() == gen2
    rolled = rig.wait_report("rollback-triggered", timeout=30)
    # At the agent's own deadline (received + 3 s), not before.
    assert time.monotonic() - released >= 3.0
    assert rolled["details"]["reason"] == WATCHDOG_REASON
    assert rig.signed(rolled)
    assert rig.link() == rig.gen1
    assert not (rig.host.state / "last_dispatched").exists()


def test_a_confirm_lost_to_a_cp_restart_is_retried_inside_a_10_s_window(rig: Rig) -> None:
    """Issue 9 #11: the retry used to come 10 s later whatever the window, so one
    unanswered confirm in a 10 s window meant a watchdog rollback."""
    gen2 = rig.closure("2")
    rig.cp.confirm_status = 0  # the CP is restarting: no answer at all
    agent = rig.start()
    agent.wait_log("checkin ok")
    rig.release(gen2, confirm_window_secs=10)
    wait_until(lambda: rig.cp.confirms, 60, "the first confirm")
    rig.cp.confirm_status = 204  # back up
    agent.wait_log("confirm answered status=204", timeout=15)
    assert "rollback reason=" not in agent.log()
    assert rig.link() == gen2
    assert len(rig.cp.confirms) == 2
    assert rig.cp.events() == ["activation-started"]


def test_a_manifest_ahead_of_the_host_clock_is_refused_in_one_line(rig: Rig) -> None:
    """Issue 9 #13: as an agent whose clock is 10 minutes slow sees a fresh release."""
    agent = rig.start()
    rid = rig.release(rig.gen1.replace("host-1", "host-9"), signed_at=now() + timedelta(minutes=10))
    rig.wait_report("manifest-verify-failed")
    agent.wait_log("checkin ok", count=3)
    [line] = [ln for ln in agent.log().splitlines() if "manifest refused" in ln]
    assert re.search(
        r"manifest refused: your clock is (59\d|600) s behind the manifest's signedAt "
        rf"\(\S+Z\); fix the host clock rollout={rid}$",
        line,
    ), line
    outcome = json.loads((rig.host.state / "last_fetch_outcome").read_text())
    assert outcome["result"] == "clock-skew"  # not verify-failed, which the CP holds on
    last = rig.cp.checkins[-1]
    assert last["lastFetchOutcome"]["result"] == "clock-skew"
    sent = datetime.fromisoformat(last["sentAt"])
    assert abs((sent - now()).total_seconds()) < 10
    assert rig.link() == rig.gen1


def test_stale_target_is_refused(rig: Rig) -> None:
    gen2 = rig.closure("2")
    agent = rig.start()
    rig.release(gen2, signed_at=now() - timedelta(seconds=600 + 120), freshness_window_secs=600)
    stale = rig.wait_report("stale-target")
    assert stale["details"]["closure_hash"] == basename(gen2)
    assert stale["details"]["freshness_window_secs"] == 600
    assert stale["details"]["age_secs"] >= 720
    assert rig.signed(stale)
    agent.wait_log("checkin ok", count=3)
    assert rig.cp.manifest_gets == []
    assert rig.link() == rig.gen1
    assert rig.cp.events() == ["stale-target"]


def test_closure_signed_by_an_unknown_key_is_refused(rig: Rig) -> None:
    rogue = BinaryCache(rig.dir / "rogue-keys", rig.env, key_name="rogue-1")
    gen2 = rig.closure("2", rogue=rogue.secret)
    agent = rig.start()
    rig.release(gen2)
    refused = rig.wait_report("closure-signature-mismatch", timeout=60)
    assert refused["details"]["closure_hash"] == basename(gen2)
    assert "is not signed by any of the keys" in refused["details"]["stderr_tail"]
    assert rig.signed(refused)
    agent.wait_log("checkin ok", count=3)
    assert not os.path.exists(gen2)
    assert rig.link() == rig.gen1
    assert generations(rig.host.profile) == [1]
    assert rig.cp.events() == ["activation-started", "closure-signature-mismatch"]


def test_cache_outage_is_a_fetch_failure_not_a_crash(rig: Rig) -> None:
    gen2 = rig.closure("2")
    rig.cache.stop()
    agent = rig.start()
    rig.release(gen2)
    failed = rig.wait_report("realise-failed", timeout=60)
    assert failed["details"]["closure_hash"] == basename(gen2)
    assert rig.signed(failed)
    seen = agent.count("checkin ok")
    agent.wait_log("checkin ok", count=seen + 2)
    assert agent.proc.poll() is None
    assert rig.link() == rig.gen1


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_stopped_mid_switch_then_restart_confirms_without_a_second_activation(
    rig: Rig, sig: signal.Signals
) -> None:
    go = rig.dir / "go"
    gen2 = rig.closure("2", wait_for=go)
    agent = rig.start()
    rid = rig.release(gen2)
    wait_until(lambda: f"{gen2} switch" in rig.systems.calls(), 60, "the switch running")
    stopped = time.monotonic()
    rc = agent.stop(sig)
    # SIGTERM abandons the switch in flight rather than wait out its 300 s bound.
    assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    assert time.monotonic() - stopped < 10
    dispatched = json.loads((rig.host.state / "last_dispatched").read_text())
    assert dispatched["closureHash"] == basename(gen2)
    go.write_text("")  # the detached switch goes on without the agent
    wait_until(lambda: rig.link() == gen2, 30, "the switch finished")
    again = rig.start()
    wait_until(lambda: rig.cp.confirms, 30, "boot recovery confirm")
    assert rig.cp.confirms[0]["rollout"] == rid
    assert rig.cp.confirms[0]["generation"]["closureHash"] == basename(gen2)
    again.wait_log("checkin ok", count=3)
    assert rig.systems.calls() == [f"{gen2} switch"]
    assert rig.cp.events() == ["activation-started"]
    assert not (rig.host.state / "last_dispatched").exists()
    assert (rig.host.state / "last_confirmed_at").read_text().startswith(basename(gen2))
