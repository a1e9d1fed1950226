"""The `ssh` backend: the local fleet's CP, forge, binary cache and PKI on this machine,
its hosts reached only over SSH (paramiko for control, testinfra for state checks).

The hosts come from an inventory (harness.inventory); without one the backend writes
its own: two agent hosts `h1`, `h2` and a `cp` host, all private sshd instances on
127.0.0.1 (harness.sshhosts) with their own port, host key and directory. An agent
host's sessions land in its Nix world (harness.nshost: a private /nix in a mount
namespace), so what runs there over SSH is what the local backend runs in-process.

What goes over SSH, per host:

- installing the agent: its trust.json, fleet CA, SSH host key, bootstrap token, health
  checks and the `nixos-rebuild` shim, copied by SFTP into `<dir>/etc` and `<dir>/bin`
  before each start (as a NixOS deploy and agenix would put them there);
- starting it (`setsid … &`, its PID echoed back; through `python -m harness.launch`
  with the run's mutant, so the bug is inside the agent started over SSH), killing it
  (`kill -KILL PID`), and whether it runs (`/proc/PID`);
- its log, read by SFTP from where the last read stopped (the history's agent journal);
- its state: the current-system link, profile generations, the dispatch record (SFTP
  on the polling path, one round trip each: a command costs ~170 ms on this machine);
  the final state and the stuck-agent diagnosis (seed 002, host half) through
  testinfra (`file(link).linked_to`, `run`, `service(unit).is_running` where systemd
  runs the agent);
- the operator's shell, on the inventory's `cp` host (the CP itself runs here).

External (non-`private`) inventory hosts are refused with one line: the releases are
closures built for the harness's host worlds; real NixOS systems for a lab's machines
are not built here yet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import signal
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.backends.local import (
    EXPIRED_AGO,
    EXPIRED_CERT_VALIDITY_SECS,
    LOG_TAIL,
    LocalFleetBackend,
)
from harness.backends.local import available as local_available
from harness.cpenv import CN_SUFFIX, wait_until
from harness.fleet import (
    AGENT_START,
    CommandFailed,
    Final,
    History,
    HostDiagnosis,
    Shape,
)
from harness.inventory import Inventory, InventoryHost, load, write
from harness.localfleet import ROOT, AgentProcess, FleetHost
from harness.nshost import PROFILE
from harness.pki import AgentCert, CertPaths
from harness.runner import BackendUnavailable
from harness.sshhosts import PrivateSshd, SshError, SshHost, keygen, login_script, missing_tools
from nixfleet.core.closure import closure_hash_from_path
from nixfleet.core.errors import BadInput, ParseError
from nixfleet.cp.issuance import agent_cn

INVENTORY_ENV = "FLEET_HARNESS_INVENTORY"
"""The inventory file (`fleet-harness --inventory` sets it; pytest items read it too)."""
PRIVATE_AGENTS = ("h1", "h2")
"""The agent hosts of the backend's own inventory."""
CP_HOST = "cp"
SESSION_ENV = ("NIX_CONFIG", "HOME", "XDG_CACHE_HOME", "TMPDIR", "PATH")
"""What a host-world session exports (harness.nshost.HostRoot.environ)."""
INSTALLED = {
    "--trust-file": ("trust.json", 0o644),
    "--ca-cert": ("ca.pem", 0o644),
    "--ssh-host-key-file": ("ssh_host_ed25519_key", 0o600),
    "--bootstrap-token-file": ("bootstrap-token.json", 0o600),
    "--health-checks-config": ("health-checks.json", 0o644),
}
"""The agent's input files the backend installs into `<dir>/etc` (flag → file, mode)."""


def available() -> str | None:
    """Why the ssh backend cannot run here (None: it can), in one line."""
    return missing_tools() or local_available()


def default_inventory(dir: Path) -> Inventory:
    """Two private agent hosts and a private CP host, with a fresh client key."""
    key = dir / "client_key"
    hosts = [
        InventoryHost(name=n, address="127.0.0.1", key=key, private=True) for n in PRIVATE_AGENTS
    ]
    hosts.append(InventoryHost(name=CP_HOST, address="127.0.0.1", key=key, role="cp", private=True))
    return write(dir / "inventory.toml", hosts)


class RemoteAgent(AgentProcess):
    """One agent run on a host, started over SSH: its PID there and its log, mirrored
    into the harness's workdir by SFTP (the history reads the mirror)."""

    def __init__(
        self, ssh: SshHost, pid: int, remote_log: str, mirror: Path, *, private: bool
    ) -> None:
        self.ssh = ssh
        self.private = private
        self.remote_pid = pid
        self.remote_log = remote_log
        self.log_path = mirror
        self.exited = False
        mirror.parent.mkdir(parents=True, exist_ok=True)
        mirror.write_bytes(b"")
        self.proc = _NoLocalProcess(self)  # type: ignore[assignment]

    @property
    def pid(self) -> int:
        return self.remote_pid

    def running(self) -> bool:
        """`/proc/PID` on the host shows the agent, not a zombie (nothing reaps it once
        its session ended) nor another process that took the PID."""
        if self.exited:
            return False
        stat = self.ssh.read(f"/proc/{self.remote_pid}/stat")
        cmdline = self.ssh.read(f"/proc/{self.remote_pid}/cmdline") or b""
        alive = (
            stat is not None
            and stat.rsplit(b")", 1)[-1].split()[:1] != [b"Z"]
            and b"nixfleet.agent.main" in cmdline
        )
        if not alive:
            self.sync()  # the last lines it wrote
            self.exited = True
        return alive

    def sync(self) -> None:
        """Append what the remote log gained since the last read to the mirror."""
        if self.exited:
            return
        have = self.log_path.stat().st_size
        data = self.ssh.read(self.remote_log, have)
        if data:
            with self.log_path.open("ab") as f:
                f.write(data)

    def log(self) -> str:
        self.sync()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """`kill -SIG PID` on the host, then wait for it (SIGKILL after 15 s)."""
        try:
            if self.exited or not self.running():
                return 0
            for s, patience in ((sig, 15.0), (signal.SIGKILL, 10.0)):
                self.ssh.run(f"kill -{int(s)} {self.remote_pid}")
                with contextlib.suppress(TimeoutError):
                    wait_until(lambda: not self.running(), patience, "agent exit", interval=0.05)
                    return -int(s)
        except (SshError, OSError):
            if self.private:
                return self._stop_here()
            raise
        raise SshError(f"{self.ssh.name}: agent {self.remote_pid} survived SIGKILL")

    def _stop_here(self) -> int:
        """Teardown's safety net when a private host's SSH is gone (the run failed there):
        its agent is a process of this machine, killed by its PID if it is still ours."""
        try:
            cmdline = Path(f"/proc/{self.remote_pid}/cmdline").read_bytes()
        except OSError:
            cmdline = b""
        if b"nixfleet.agent.main" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.remote_pid, signal.SIGKILL)
        self.exited = True
        return -int(signal.SIGKILL)


class _NoLocalProcess:
    """What `LocalFleet` reads of an agent's Popen, for one that runs on a host."""

    def __init__(self, agent: RemoteAgent) -> None:
        self.agent = agent

    @property
    def pid(self) -> int:
        return self.agent.remote_pid

    @property
    def returncode(self) -> int | None:
        return None if self.agent.running() else -1

    def poll(self) -> int | None:
        return self.returncode


class SshFleetBackend(LocalFleetBackend):
    backend = "ssh"

    def __init__(
        self, shape: Shape, workdir: Path, mutant: str | None, inventory: Path | None = None
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.inventory = load(inventory) if inventory is not None else default_inventory(workdir)
        external = [h.where for h in self.inventory.hosts if not h.private]
        if external:
            raise BackendUnavailable(
                f"external inventory hosts ({', '.join(external)}) need real NixOS closures "
                "built for them, which the harness does not build yet; mark the hosts "
                "`private = true` or leave --inventory out"
            )
        if shape.channels:
            raise BackendUnavailable("the ssh backend runs the inventory's hosts on one channel")
        self.sshds: dict[str, PrivateSshd] = {}
        self.ssh: dict[str, SshHost] = {}
        super().__init__(shape, workdir, mutant)

    def stable_hosts(self, shape: Shape) -> list[str]:
        return [h.name for h in self.inventory.agents]

    # --- the hosts ------------------------------------------------------------------------

    def _start(self, mutant: str | None) -> None:
        """The hosts' sshds and connections, then the CP and the agents (over SSH)."""
        known = self.workdir / "known_hosts"
        known.write_text("")
        for inv in self.inventory.hosts:
            sshd = self._private_sshd(inv)
            self.sshds[inv.name] = sshd
            with known.open("a") as f:
                f.write(sshd.known_hosts_line())
        for inv in self.inventory.hosts:
            sshd = self.sshds[inv.name]
            self.ssh[inv.name] = SshHost(
                inv.name, inv.address, sshd.port, user=inv.user, key=inv.key, known_hosts=known
            )
        super()._start(mutant)

    def _private_sshd(self, inv: InventoryHost) -> PrivateSshd:
        public = keygen(inv.key, "fleet-harness")
        if inv.role == "cp":
            return PrivateSshd(self.workdir / "cp-host", inv.name, authorized_key=public).start()
        root = self.local.host(inv.name).root
        env = {k: v for k, v in root.environ().items() if k in SESSION_ENV}
        login = login_script(root.dir, root.nix_dir, env)
        return PrivateSshd(root.dir / "sshd", inv.name, authorized_key=public, login=login).start()

    def where(self, host: str) -> str:
        """The host as the report names it: inventory name, user@address:port."""
        inv = self.inventory.host(host)
        port = self.sshds[host].port if host in self.sshds else inv.port
        return f"{inv.name} ({inv.user}@{inv.address}:{port})"

    def ran_on(self) -> list[str]:
        """Every inventory host, with its role and address (`Outcome.ran_on`)."""
        return [f"{h.role} host {self.where(h.name)}" for h in self.inventory.hosts]

    def remote_dir(self, host: str) -> str:
        return str(self.local.host(host).dir)

    def close(self) -> None:
        try:
            super().close()
        finally:
            for conn in self.ssh.values():
                conn.close()
            for sshd in self.sshds.values():
                sshd.stop()

    # --- the agent over SSH ---------------------------------------------------------------

    def _install(self, h: FleetHost, argv: list[str]) -> list[str]:
        """Copy the agent's input files onto the host; `argv` with their paths there."""
        ssh, etc = self.ssh[h.name], f"{self.remote_dir(h.name)}/etc"
        ssh.check(f"mkdir -p {shlex.quote(etc)} {shlex.quote(self.remote_dir(h.name))}/bin")
        out = list(argv)
        for flag, (name, mode) in INSTALLED.items():
            at = out.index(flag) + 1
            ssh.put(Path(out[at]).read_bytes(), f"{etc}/{name}", mode)
            out[at] = f"{etc}/{name}"
        for shim in self.local.agent_path:
            for tool in shim.iterdir():
                ssh.put(tool.read_bytes(), f"{self.remote_dir(h.name)}/bin/{tool.name}", 0o755)
        return out

    def start_agent(self, host: str) -> None:
        h = self.local.host(host)
        if h.agents and h.agent.running():
            raise RuntimeError(f"agent {host} is already running (pid {h.agent.pid})")
        argv = self._install(h, self.local.agent_argv(host))
        home = self.remote_dir(host)
        log = f"{home}/agent-{len(h.agents)}.log"
        env = {
            "PYTHONPATH": str(ROOT),
            # `$PATH` is the session's (the host's); the shims go first.
            "PATH": f"{home}/bin:$PATH",
        }
        exports = " ".join(f"{k}={shlex.quote(v) if k != 'PATH' else v}" for k, v in env.items())
        cmd = (
            f"cd {shlex.quote(home)} && export {exports} && "
            f"setsid {shlex.join([*self.local.launcher, 'nixfleet.agent.main', *argv])} "
            f">>{shlex.quote(log)} 2>&1 </dev/null & echo $!"
        )
        pid = int(self.ssh[host].check(cmd).strip())
        mirror = self.workdir / "host-logs" / host / f"agent-{len(h.agents)}.log"
        private = self.inventory.host(host).private
        h.agents.append(RemoteAgent(self.ssh[host], pid, log, mirror, private=private))
        h.killed = False
        self.record(AGENT_START, host, closure=self.current(host))

    def deploy_token(self, host: str, token: Any) -> None:
        """Agenix's part: the token onto the host, where its agent's flag points."""
        super().deploy_token(host, token)  # the harness's copy, installed at each start
        etc = f"{self.remote_dir(host)}/etc"
        self.ssh[host].check(f"mkdir -p {shlex.quote(etc)}")
        self.ssh[host].put(json.dumps(token).encode(), f"{etc}/bootstrap-token.json", 0o600)

    def expire_cert(self, host: str) -> None:
        """The expired certificate written on the host, at its agent's `--client-cert`."""
        if self.agent_up(host):
            raise RuntimeError(f"stop {host}'s agent before expiring its certificate")
        issued = self.local.env.pki.issue_agent(
            host, validity_secs=EXPIRED_CERT_VALIDITY_SECS, now=datetime.now(UTC) - EXPIRED_AGO
        )
        path = str(self.local.host(host).client_cert)
        self.ssh[host].put(issued.cert.read_bytes(), path, 0o644)

    def _cert(self, host: str) -> CertPaths | AgentCert:
        """A host's certificate as its agent holds it, fetched from the host."""
        if host not in self.local.hosts:
            return super()._cert(host)
        h = self.local.host(host)
        pem = self.ssh[host].read(str(h.client_cert))
        if pem is None:
            return self.local.env.agent(host)
        copy = self.workdir / "host-certs" / f"{host}.pem"
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(pem)
        return CertPaths(cert=copy, key=h.key.tls_key, cn=agent_cn(host, CN_SUFFIX))

    @property
    def history(self) -> History:
        for h in self.local.hosts.values():
            for a in h.agents:
                if isinstance(a, RemoteAgent):
                    a.sync()
        return self.log.history()

    # --- the hosts' state ------------------------------------------------------------------

    def _link(self, host: str, link: str) -> str | None:
        try:
            target = self.ssh[host].sftp.readlink(link)
        except OSError:
            return None
        return target

    def current(self, host: str) -> str | None:
        target = self._link(host, str(self.local.host(host).root.current_system))
        return _basename(target)

    def generations(self, host: str) -> int:
        names = self.ssh[host].sftp.listdir(str(PROFILE.parent))
        return sum(1 for n in names if n.startswith("system-") and n.endswith("-link"))

    def dispatch_record(self, host: str) -> Mapping[str, str] | None:
        raw = self.ssh[host].read(str(self.local.host(host).state_file("last_dispatched")))
        if raw is None:
            return None
        try:
            d: dict[str, Any] = json.loads(raw)
        except ValueError:
            return None
        return {
            "closure": str(d.get("closureHash")),
            "rollout": str(d.get("rolloutId")),
            "dispatched_at": str(d.get("dispatchedAt")),
        }

    def final(self) -> Final:
        """The local backend's final state, each host's running system read through
        testinfra (`file(current-system).linked_to`)."""
        base = super().final()
        hosts = {
            name: dataclasses.replace(hf, current=self.testinfra_current(name))
            for name, hf in base.hosts.items()
        }
        return dataclasses.replace(base, hosts=hosts)

    def testinfra_current(self, host: str) -> str | None:
        link = self.ssh[host].testinfra.file(str(self.local.host(host).root.current_system))
        if not link.is_symlink:
            return None
        return _basename(link.linked_to)

    def diagnose_host(self, host: str) -> HostDiagnosis:
        """Seed 002's host half through testinfra: the unit's state (`systemctl
        is-active`) where systemd runs the agent, else its process's; the last 50 lines
        of its log; the current-system basename."""
        ti = self.ssh[host].testinfra
        h = self.local.host(host)
        unit = self.inventory.host(host).unit
        if unit is not None:
            state = ti.run("systemctl is-active %s", unit).stdout.strip()
            log = ti.run("journalctl -u %s -n %s --no-pager", unit, str(LOG_TAIL)).stdout
        else:
            state = "inactive"
            agent = h.agents[-1] if h.agents else None
            if isinstance(agent, RemoteAgent):
                ps = ti.run("ps -o stat= -p %s", str(agent.remote_pid)).stdout.strip()
                state = "active" if ps and not ps.startswith("Z") else "inactive"
                log = ti.run("tail -n %s %s", str(LOG_TAIL), agent.remote_log).stdout
            else:
                log = ""
        return HostDiagnosis(
            agent=state,
            log_tail=tuple(log.splitlines()[-LOG_TAIL:]),
            current=self.testinfra_current(host),
            source=self.where(host),
        )

    # --- the operator, on the CP host -------------------------------------------------------

    def operator(self, cmd: str) -> str:
        """`cmd` by bash on the inventory's `cp` host, over SSH, with the operator shell's
        variables (harness.opshell); on this machine's shell without a `cp` host."""
        cp = self.inventory.cp
        if cp is None:
            return super().operator(cmd)
        env = {k: v for k, v in self.shell.environ().items() if os.environ.get(k) != v}
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
        state = self.local.env.state_dir
        state.mkdir(parents=True, exist_ok=True)
        line = f"cd {shlex.quote(str(state))} && export {exports} && bash -c {shlex.quote(cmd)}"
        res = self.ssh[cp.name].run(line)
        if res.status != 0:
            tail = " | ".join(res.stderr.strip().splitlines()[-3:])
            raise CommandFailed(
                f"operator command on {self.where(cp.name)} exited {res.status}: {cmd}"
                + (f" ({tail})" if tail else "")
            )
        return res.stdout


def _basename(target: str | None) -> str | None:
    if target is None:
        return None
    try:
        return str(closure_hash_from_path(target))
    except ParseError:
        return None


@contextlib.contextmanager
def open_fleet(
    shape: Shape, workdir: Path, mutant: str | None, inventory: Path | None = None
) -> Iterator[SshFleetBackend]:
    why = available()
    if why is not None:
        raise BackendUnavailable(why)
    if inventory is None and os.environ.get(INVENTORY_ENV):
        inventory = Path(os.environ[INVENTORY_ENV])
    try:
        fleet = SshFleetBackend(shape, workdir, mutant, inventory)
    except (BadInput, SshError) as exc:
        raise BackendUnavailable(str(exc)) from None
    try:
        yield fleet
    finally:
        fleet.close()


__all__ = [
    "INVENTORY_ENV",
    "SshFleetBackend",
    "available",
    "default_inventory",
    "open_fleet",
]
