"""`nixfleet-agent` bad input: one line on stderr and exit 2, or, where the daemon must
keep running (an unreachable CP), retries with backoff and a clean SIGTERM exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_testlib import AgentProc, Host, free_port, start_agent

from fleet_sim.fleetgen import ReleaseKit, fake_closure
from harness.pki import Pki


@dataclass
class Setup:
    dir: Path
    pki: Pki
    host: Host
    trust: Path
    token: Path

    def args(self, *, url: str | None = None, extra: Sequence[str] = ()) -> list[str]:
        return self.host.agent_args(
            cp_url=url or f"https://127.0.0.1:{free_port()}", pki=self.pki, trust=self.trust,
            extra=["--bootstrap-token-file", str(self.token), *extra],
        )  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    pki = Pki.create(tmp_path / "pki")
    host = Host(dir=tmp_path / "h1", name="h1")
    host.dir.mkdir()
    os.symlink(f"/nix/store/{fake_closure('h1', 1)}", host.link)
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps(ReleaseKit().trust()))
    from datetime import UTC, datetime

    from nixfleet.core.token import dump_token, mint_token

    token = mint_token(
        hostname="h1",
        expected_pubkey_fingerprint=pki.host_key("h1").fingerprint,
        org_root_key=ReleaseKit().org_root_key,
        now=datetime.now(UTC),
        nonce_bytes=b"\x01" * 16,
    )
    token_path = tmp_path / "token.json"
    token_path.write_text(json.dumps(dump_token(token)))
    return Setup(dir=tmp_path, pki=pki, host=host, trust=trust, token=token_path)


def run_agent(
    argv: Sequence[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nixfleet.agent.main", *argv],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip


def one_line(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("nixfleet-agent: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def replace_flag(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


def test_missing_and_malformed_token(setup: Setup) -> None:
    args = setup.args()
    missing = replace_flag(args, "--bootstrap-token-file", str(setup.dir / "nope.json"))
    one_line(run_agent(missing), "cannot read bootstrap token", "nope.json", "No such file")
    (setup.dir / "bad.json").write_text("{not json")
    bad = replace_flag(args, "--bootstrap-token-file", str(setup.dir / "bad.json"))
    one_line(run_agent(bad), "bootstrap token", "bad.json", "not JSON")
    (setup.dir / "shape.json").write_text(json.dumps({"version": 1, "claims": {}}))
    shape = replace_flag(args, "--bootstrap-token-file", str(setup.dir / "shape.json"))
    one_line(run_agent(shape), "shape.json", "claims.issuedAt: missing")
    other = replace_flag(args, "--machine-id", "h2")
    one_line(run_agent(other), "issued for 'h1', not --machine-id 'h2'")
    no_token = [a for a in args if a not in ("--bootstrap-token-file", str(setup.token))]
    one_line(run_agent(no_token), "no client certificate at", "no --bootstrap-token-file")


def test_missing_and_malformed_trust_file(setup: Setup) -> None:
    args = setup.args()
    one_line(run_agent(replace_flag(args, "--trust-file", str(setup.dir / "none.json"))),
             "cannot read trust file", "none.json")  # fmt: skip
    (setup.dir / "t1.json").write_text("[]")
    one_line(run_agent(replace_flag(args, "--trust-file", str(setup.dir / "t1.json"))),
             "trust file", "t1.json", "expected a JSON object")  # fmt: skip
    (setup.dir / "t2.json").write_text(json.dumps({"schemaVersion": 2}))
    one_line(run_agent(replace_flag(args, "--trust-file", str(setup.dir / "t2.json"))),
             "schemaVersion")  # fmt: skip


def test_missing_and_malformed_key_files(setup: Setup) -> None:
    args = setup.args()
    one_line(run_agent(replace_flag(args, "--ssh-host-key-file", str(setup.dir / "nokey"))),
             "cannot read SSH host key", "nokey")  # fmt: skip
    (setup.dir / "badkey").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n")
    one_line(run_agent(replace_flag(args, "--ssh-host-key-file", str(setup.dir / "badkey"))),
             "SSH host key", "badkey")  # fmt: skip
    one_line(run_agent([*args, "--client-key", str(setup.dir / "nokey")]),
             "cannot read client key", "nokey")  # fmt: skip
    one_line(run_agent(replace_flag(args, "--ca-cert", str(setup.dir / "noca.pem"))),
             "cannot load CA certificate", "noca.pem")  # fmt: skip


def test_other_bad_flags(setup: Setup) -> None:
    args = setup.args()
    one_line(run_agent(replace_flag(args, "--control-plane-url", "ftp://x")),
             "--control-plane-url", "https://HOST")  # fmt: skip
    one_line(run_agent(replace_flag(args, "--poll-interval", "soon")), "--poll-interval")
    one_line(run_agent([*args, "--compliance-gate-mode", "strict"]), "--compliance-gate-mode")
    (setup.dir / "h1" / "health-checks.json").write_text('{"mode": 3}')
    one_line(run_agent(args), "health checks config", "mode")
    (setup.dir / "h1" / "health-checks.json").unlink()
    one_line(run_agent(replace_flag(args, "--current-system-link", str(setup.dir / "nolink"))),
             "cannot read the running system", "nolink")  # fmt: skip
    cert = setup.pki.issue_agent("h9").cert
    one_line(run_agent(replace_flag(args, "--client-cert", str(cert))),
             "CN 'agent-h9.fleet.test' does not match --machine-id 'h1'")  # fmt: skip
    (setup.dir / "junk.pem").write_text("junk")
    one_line(run_agent(replace_flag(args, "--client-cert", str(setup.dir / "junk.pem"))),
             "not a PEM certificate")  # fmt: skip


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--poll-interval", "1e9"),
        ("--poll-interval", "0.01"),
        ("--poll-interval", "nan"),
        ("--switch-timeout-secs", "1e9"),
        ("--switch-timeout-secs", "0"),
    ],
)
def test_interval_flags_are_bounded(setup: Setup, flag: str, value: str) -> None:
    line = one_line(run_agent([*setup.args(), flag, value]), flag, f"{value!r}")
    assert "between 1 and 3600 seconds" in line


def test_flags_from_the_environment(setup: Setup) -> None:
    env = dict(os.environ)
    env["NIXFLEET_AGENT_TRUST_FILE"] = str(setup.dir / "from-env.json")
    args = setup.args()
    i = args.index("--trust-file")
    del args[i : i + 2]
    one_line(run_agent(args, env), "cannot read trust file", "from-env.json")
    # The flag beats the environment.
    env["NIXFLEET_AGENT_TRUST_FILE"] = str(setup.trust)
    env["NIXFLEET_AGENT_POLL_INTERVAL"] = "1"
    one_line(run_agent(replace_flag(args, "--poll-interval", "never"), env), "'never'")
    # The URL also comes as the reference's NIXFLEET_AGENT_CP_URL.
    i = args.index("--control-plane-url")
    del args[i : i + 2]
    env["NIXFLEET_AGENT_CP_URL"] = "gopher://x"
    one_line(run_agent(args, env), "gopher://x")
    env["NIXFLEET_AGENT_CONTROL_PLANE_URL"] = "gopher://y"
    one_line(run_agent(args, env), "gopher://y")


def test_unreachable_cp_keeps_retrying(setup: Setup) -> None:
    port = free_port()  # nothing listens there
    agent: AgentProc = start_agent(
        setup.args(url=f"https://127.0.0.1:{port}"), dict(os.environ), setup.dir / "agent.log"
    )
    try:
        agent.wait_log("enroll failed; retrying in", count=2, timeout=30)
    finally:
        rc = agent.stop()
    assert rc == 0
    log = agent.log()
    assert "Traceback" not in log
    assert "connect failed" in log
    assert "agent stopped" not in log or log.strip().endswith("agent stopped")


def test_unreachable_cp_with_a_cert_backs_off_checkins(setup: Setup) -> None:
    cert = setup.pki.issue_agent("h1")
    setup.host.cert = cert
    port = free_port()
    agent = start_agent(setup.args(url=f"https://127.0.0.1:{port}"), dict(os.environ),
                        setup.dir / "agent.log")  # fmt: skip
    try:
        agent.wait_log("checkin failed", count=2, timeout=30)
    finally:
        assert agent.stop() == 0
    assert "Traceback" not in agent.log()


def test_unusable_state_files_are_moved_aside_with_one_line_each(setup: Setup) -> None:
    setup.host.cert = setup.pki.issue_agent("h1")
    state = setup.host.state
    state.mkdir()
    bad = {
        "last_dispatched": '{"closureHash": "truncat',
        "last_target": "",
        "last_fetch_outcome": "[]",
        "last_failed_closure": '{"closureHash": 5}',
        "last_confirmed_at": "one line only\n",
    }
    for name, text in bad.items():
        (state / name).write_text(text)
    agent = start_agent(setup.args(), dict(os.environ), setup.dir / "agent.log")
    try:
        agent.wait_log("checkin failed", timeout=30)
    finally:
        assert agent.stop() == 0
    log = agent.log()
    assert "Traceback" not in log
    lines = [ln for ln in log.splitlines() if "state file unusable" in ln]
    assert len(lines) == len(bad), lines
    for name, text in bad.items():
        [line] = [ln for ln in lines if f"file={state / name} " in ln]
        assert f"moved_to={state / name}.corrupt " in line and "starting without it" in line
        assert (state / f"{name}.corrupt").read_text() == text
        assert not (state / name).exists()
