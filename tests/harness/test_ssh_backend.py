"""The ssh backend (harness.backends.ssh) end to end on two private sshd hosts and a CP
host: the agents are started, read and killed over SSH (with a mutant, through
harness.launch on the host), the hosts' state is read with testinfra, the operator's
shell runs on the CP host, and closing stops every process it started."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends import ssh
from harness.backends.ssh import RemoteAgent, SshFleetBackend
from harness.fleet import Shape
from harness.runner import BackendUnavailable

SHAPE = Shape(hosts=2, local_hosts=2, seed=12)


def pid_alive(pid: int) -> bool:
    """A process of this machine that has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def remote_agents(fleet: SshFleetBackend) -> list[RemoteAgent]:
    return [a for h in fleet.local.hosts.values() for a in h.agents if isinstance(a, RemoteAgent)]


@pytest.mark.slow
def test_hosts_driven_over_ssh(tmp_path: Path) -> None:
    with ssh.open_fleet(SHAPE, tmp_path, "report-hash-prefix") as fleet:
        assert list(fleet.hosts) == ["h1", "h2"]
        assert [line.split()[:3] for line in fleet.ran_on()] == [
            ["agent", "host", "h1"],
            ["agent", "host", "h2"],
            ["cp", "host", "cp"],
        ]
        agents = remote_agents(fleet)
        assert len(agents) == 2
        for agent in agents:
            # The mutant is inside the agent the host runs (harness.launch, over SSH).
            cmdline = agent.ssh.check(f"tr '\\0' ' ' </proc/{agent.pid}/cmdline")
            assert "harness.launch --mutant report-hash-prefix -- nixfleet.agent.main" in cmdline
        sshds = [s.proc.pid for s in fleet.sshds.values() if s.proc is not None]
        pids = [a.pid for a in agents]
    assert not any(map(pid_alive, sshds + pids))


@pytest.mark.slow
def test_state_diagnosis_and_operator(tmp_path: Path) -> None:
    with ssh.open_fleet(SHAPE, tmp_path, None) as fleet:
        h1 = "h1"
        installed = fleet.current(h1)
        assert installed is not None and installed.endswith("-nixos-system-h1-0")
        assert fleet.testinfra_current(h1) == installed
        seen = fleet.diagnose_host(h1)
        assert seen.agent == "active" and seen.current == installed
        assert any("checkin ok" in ln for ln in seen.log_tail) and len(seen.log_tail) <= 50
        assert seen.source.startswith("h1 (root@127.0.0.1:")
        fleet.kill_agent(h1)
        assert fleet.diagnose_host(h1).agent == "inactive"
        fleet.start_agent(h1)
        assert fleet.diagnose_host(h1).agent == "active"
        # The operator's shell is a session on the CP host.
        out = fleet.operator(
            'echo "$SSH_CONNECTION"; sqlite3 "$CP_DB" "SELECT count(*) FROM rollouts"'
        )
        connection, rollouts = out.splitlines()
        assert connection.split()[2:] == ["127.0.0.1", str(fleet.sshds["cp"].port)]
        assert int(rollouts) >= 0


def test_external_hosts_are_refused_in_one_line(tmp_path: Path) -> None:
    lab = tmp_path / "lab.toml"
    lab.write_text(
        'known_hosts = "kh"\n[[host]]\nname = "rack1"\naddress = "10.0.0.11"\n'
        'key = "k"\ndir = "/var/lib/lab"\n'
    )
    with (
        pytest.raises(BackendUnavailable) as exc,
        ssh.open_fleet(SHAPE, tmp_path / "run", None, lab),
    ):
        pass
    assert "rack1 (root@10.0.0.11:22)" in str(exc.value) and "\n" not in str(exc.value)


def test_available_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ssh.available() is None, ssh.available()
    monkeypatch.setattr("harness.sshhosts.SSHD", "/nonexistent/sshd")
    why = ssh.available()
    assert why is not None and "/nonexistent/sshd" in why and "openssh-server" in why
