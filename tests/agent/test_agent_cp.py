"""The agent process against a real control-plane process (harness.cpenv.CpEnv).

Enrolment from a bootstrap token (trust.json carries the org root key), checkins that
report the *full* store basename, renewal, a cold-start CP (503 until primed), and a
signed `manifest-missing` report while the CP has no signed-manifest source yet.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agent_testlib import AgentProc, Host, start_agent, wait_until

from fleet_sim.fleetgen import HostDecl, fake_closure
from harness.cpenv import CpEnv, curl, declared, sqlite3
from nixfleet.core.token import dump_token, mint_token


@pytest.fixture
def envs(tmp_path: Path) -> Iterator[list[CpEnv]]:
    made: list[CpEnv] = []
    yield made
    for env in made:
        env.close()


def make_host(env: CpEnv, name: str, closure: str) -> Host:
    host = Host(dir=env.dir.parent / f"host-{name}", name=name)
    host.dir.mkdir(parents=True, exist_ok=True)
    os.symlink(f"/nix/store/{closure}", host.link)
    return host


def token_for(env: CpEnv, host: Host) -> Path:
    token = mint_token(
        hostname=host.name,
        expected_pubkey_fingerprint=env.pki.host_key(host.name).fingerprint,
        org_root_key=env.kit.org_root_key,
        now=datetime.now(UTC),
        nonce_bytes=secrets.token_bytes(16),
    )
    path = host.dir / "token.json"
    path.write_text(json.dumps(dump_token(token)))
    return path


def run(env: CpEnv, host: Host, agents: list[AgentProc], *extra: str) -> AgentProc:
    argv = host.agent_args(cp_url=env.url(""), pki=env.pki, trust=env.trust_path, poll=1,
                           extra=extra)  # fmt: skip
    agent = start_agent(argv, dict(os.environ), host.dir / f"agent-{len(agents)}.log")
    agents.append(agent)
    return agent


def hosts_view(env: CpEnv) -> dict[str, dict[str, object]]:
    reply = curl(env.curl("/v1/hosts", cert=env.operator()))
    assert reply.status == 200, reply
    return {h["hostname"]: h for h in reply.json()["hosts"]}


def test_enrol_from_token_and_check_in_with_the_full_basename(
    tmp_path: Path, envs: list[CpEnv], agents: list[AgentProc]
) -> None:
    env = CpEnv.create(tmp_path / "cp", declared("h1"))
    envs.append(env)
    env.publish()
    cp = env.start()
    closure = fake_closure("h1", 1)  # the declared one: converged, no target
    host = make_host(env, "h1", closure)
    agent = run(env, host, agents, "--bootstrap-token-file", str(token_for(env, host)))
    agent.wait_log("checkin ok", count=3)
    cert = (host.dir / "agent-cert.pem").read_text()
    assert "BEGIN CERTIFICATE" in cert
    assert "enrolled cn=agent-h1.fleet.test" in agent.log()
    view = hosts_view(env)["h1"]
    assert view["currentClosureHash"] == closure  # 32-char hash + name, never truncated
    assert view["converged"] is True
    line = cp.lines("checkin received")[-1]
    assert f"closure_hash={closure} " in line and line.split()[-1] == "h1"
    assert "Traceback" not in agent.log()

    # Restarted, it reuses its certificate (no second enrolment).
    agent.stop()
    again = run(env, host, agents)
    again.wait_log("checkin ok", count=1)
    assert "enrolled" not in again.log()
    assert cp.lines("enrolled host=h1") and len(cp.lines("enrolled host=h1")) == 1


def test_the_agent_that_loses_an_enrolment_race_stops_with_one_line(
    tmp_path: Path, envs: list[CpEnv], agents: list[AgentProc]
) -> None:
    # Two copies of h1 (one token, two machines) enrol at once: the CP takes the nonce
    # once, the other copy gets 409, which no retry can change.
    env = CpEnv.create(tmp_path / "cp", declared("h1"))
    envs.append(env)
    env.publish()
    env.start()
    first = make_host(env, "h1", fake_closure("h1", 1))
    second = Host(dir=env.dir.parent / "host-h1-copy", name="h1")
    second.dir.mkdir()
    os.symlink(f"/nix/store/{fake_closure('h1', 1)}", second.link)
    token = token_for(env, first)
    racers = [run(env, h, agents, "--bootstrap-token-file", str(token)) for h in (first, second)]
    wait_until(lambda: any(a.proc.poll() is not None for a in racers), 30, "a racer exits")
    loser = next(a for a in racers if a.proc.poll() is not None)
    winner = next(a for a in racers if a is not loser)
    assert loser.proc.returncode == 2
    log = loser.log()
    assert "Traceback" not in log and "retrying" not in log
    [line] = [ln for ln in log.splitlines() if "already used" in ln]
    assert line.startswith("nixfleet-agent: enroll: bootstrap token ")
    assert "HTTP 409" in line and "mint a new token for h1" in line
    winner.wait_log("checkin ok")


def test_cold_start_cp_is_retried_every_10_s(
    tmp_path: Path, envs: list[CpEnv], agents: list[AgentProc]
) -> None:
    env = CpEnv.create(tmp_path / "cp", declared("h1"))
    envs.append(env)
    env.start()  # nothing published yet: the CP answers 503 until primed
    host = make_host(env, "h1", fake_closure("h1", 1))
    agent = run(env, host, agents, "--bootstrap-token-file", str(token_for(env, host)))
    agent.wait_log("enroll: control plane not ready; retrying in 10 s")
    env.publish()
    agent.wait_log("enrolled cn=agent-h1.fleet.test", timeout=30)
    agent.wait_log("checkin ok")
    assert agent.proc.poll() is None
    assert "Traceback" not in agent.log()


def test_renews_below_half_validity(
    tmp_path: Path, envs: list[CpEnv], agents: list[AgentProc]
) -> None:
    env = CpEnv.create(tmp_path / "cp", declared("h1"))
    envs.append(env)
    env.publish()
    env.start()
    host = make_host(env, "h1", fake_closure("h1", 1))
    # 200 s of validity, 150 s of it gone: 25 % left, below the 50 % threshold.
    host.cert = env.pki.issue_agent(
        "h1", validity_secs=200, now=datetime.now(UTC) - timedelta(seconds=150)
    )
    before = host.cert.cert.read_text()
    agent = run(env, host, agents)
    agent.wait_log("renewed cn=agent-h1.fleet.test")
    agent.wait_log("checkin ok", count=2)
    assert host.cert.cert.read_text() != before
    assert agent.count("renewed cn=") == 1  # the new cert has all its validity left


def test_dispatch_without_a_signed_manifest_reports_manifest_missing(
    tmp_path: Path, envs: list[CpEnv], agents: list[AgentProc]
) -> None:
    env = CpEnv.create(tmp_path / "cp", declared("h1", generation=2))
    envs.append(env)
    env.publish(manifests=False)  # CI signed no manifest for this release
    cp = env.start()
    host = make_host(env, "h1", fake_closure("h1", 1))
    host.cert = env.pki.issue_agent("h1")
    agent = run(env, host, agents)
    agent.wait_log("report sent event=manifest-missing")
    rows = sqlite3(env.db_path, "SELECT event_kind, signature_status FROM host_reports;")
    assert "manifest-missing|verified" in rows.split()
    outcome = json.loads((host.state / "last_fetch_outcome").read_text())
    assert outcome["result"] == "fetch-failed"
    # The next checkin tells the CP, which holds the dispatch (no repeat target).
    agent.wait_log("checkin ok", count=3)
    assert len(cp.lines("dispatch: target issued")) == 1
    assert os.readlink(host.link).endswith(fake_closure("h1", 1))
    wait_until(lambda: "last_fetch=fetch-failed" in cp.log(), 10, "CP saw the fetch failure")


def test_refused_renewal_is_reported_and_retried(
    tmp_path: Path, envs: list[CpEnv], agents: list[AgentProc]
) -> None:
    # The fleet declares another key for h1: the CP refuses to renew (401), the agent
    # keeps its still-valid cert, reports `renewal-failed` and tries again next checkin.
    env = CpEnv.create(tmp_path / "cp", {})
    other = env.pki.host_key("someone-else").public_line
    envs.append(env)
    env.publish({"h1": HostDecl(closure=fake_closure("h1", 1), pubkey=other)})
    env.start()
    host = make_host(env, "h1", fake_closure("h1", 1))
    host.cert = env.pki.issue_agent(
        "h1", validity_secs=200, now=datetime.now(UTC) - timedelta(seconds=150)
    )
    agent = run(env, host, agents)
    agent.wait_log("renewal failed; trying again next checkin", count=2)
    agent.wait_log("report sent event=renewal-failed")
    assert agent.count("checkin ok") >= 1
    agent.wait_log("renewal failed; trying again next checkin", count=4)
    rows = sqlite3(env.db_path, "SELECT event_kind FROM host_reports;").split()
    assert rows == ["renewal-failed"]  # reported once an hour, retried every checkin


@pytest.mark.parametrize(
    ("err", "reason"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "[Errno 111] Connection refused"),
        (OSError(111, ""), "Connection refused"),
        (ConnectionResetError(), "ConnectionResetError"),
    ],
)
def test_a_connect_failure_always_names_a_reason(err: OSError, reason: str) -> None:
    from nixfleet.agent.transport import _os_reason

    assert _os_reason(err) == reason
