"""SSH hosts: private `sshd` instances on 127.0.0.1 and the harness's sessions to them.

A private host (docs/environment.md, "SSH hosts: a private sshd") is one `sshd -D -e`
with its own port, host key, authorized key and directory, stopped by its own PID.
With a `login` environment, every session it opens (commands and SFTP alike, through
`ForceCommand`) lands in that host's Nix world as harness.nshost lays it out: the
host's private `/nix` bind-mounted over `/nix` in a new mount namespace, its NIX_CONFIG,
HOME and TMPDIR, its directory as the working directory. So a command sent over SSH
sees exactly what that host's agent sees; nothing else on this machine changes.

`SshHost` is the harness's side of one host: a paramiko client that checks the host
key against a known_hosts file (RejectPolicy) for control (run, SFTP put and read),
and a testinfra `Host` over the same connection for state checks (`file(…).linked_to`,
`run`, `service(…).is_running`).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from harness.cpenv import free_port
from harness.nixfixture import in_namespace

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
PRIVSEP_DIR = Path("/run/sshd")
"""sshd refuses to start without it (docs/environment.md)."""
START_TIMEOUT_SECS = 10.0
CONNECT_TIMEOUT_SECS = 10.0

SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
Subsystem sftp {sftp}
"""


def missing_tools() -> str | None:
    """What a private sshd host needs and this machine lacks (one line), or None."""
    missing = [t for t in (SSHD, SFTP_SERVER) if not os.access(t, os.X_OK)]
    missing += [t for t in ("ssh-keygen", "unshare") if shutil.which(t) is None]
    if missing:
        return f"private sshd hosts need {', '.join(missing)} (apt-get install openssh-server)"
    return None


def keygen(path: Path, comment: str) -> str:
    """An ed25519 key pair at `path` (+ `.pub`); its public line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
            capture_output=True,
            timeout=30,
        )
    return path.with_name(path.name + ".pub").read_text().strip()


def login_script(host_dir: Path, nix_dir: Path, env: Mapping[str, str]) -> str:
    """The ForceCommand of a host-world sshd: the session's command (or a shell) runs
    in a new mount namespace with `nix_dir` over /nix, `env` exported, in `host_dir`."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
    enter = shlex.join(in_namespace(nix_dir, ["sh", "-c"]))
    return (
        "#!/bin/sh\n"
        "# Every session of this host lands in its own Nix world (harness.sshhosts).\n"
        f"{exports}"
        f"cd {shlex.quote(str(host_dir))} || exit 1\n"
        f'exec {enter} "${{SSH_ORIGINAL_COMMAND:-exec sh}}"\n'
    )


class PrivateSshd:
    """One sshd on 127.0.0.1 (see the module docstring); `start()` then `stop()`."""

    def __init__(
        self,
        dir: Path,
        name: str,
        *,
        authorized_key: str,
        login: str | None = None,
    ) -> None:
        self.dir = dir
        self.name = name
        self.authorized_key = authorized_key
        self.login = login
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.host_key = dir / "ssh_host_ed25519_key"
        self.log_path = dir / "sshd.log"

    @property
    def public_key(self) -> str:
        """The host key's `type base64` (what known_hosts lists)."""
        return " ".join(
            self.host_key.with_name(self.host_key.name + ".pub").read_text().split()[:2]
        )

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.public_key}\n"

    def start(self, attempts: int = 3) -> PrivateSshd:
        """Start on a free port (another, if a parallel test took it first)."""
        why = missing_tools()
        if why is not None:
            raise RuntimeError(why)
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        keygen(self.host_key, f"{self.name} host key")
        (self.dir / "authorized_keys").write_text(self.authorized_key + "\n")
        config = self.dir / "sshd_config"
        for _ in range(attempts):
            self.port = free_port()
            text = SSHD_CONFIG.format(
                port=self.port,
                host_key=self.host_key,
                pid_file=self.dir / "sshd.pid",
                authorized_keys=self.dir / "authorized_keys",
                sftp=SFTP_SERVER,
            )
            if self.login is not None:
                script = self.dir / "login"
                script.write_text(self.login)
                script.chmod(0o755)
                text += f"ForceCommand {script}\n"
            config.write_text(text)
            test = subprocess.run(
                [SSHD, "-t", "-f", str(config)], capture_output=True, text=True, timeout=10
            )
            if test.returncode != 0:
                raise RuntimeError(f"sshd -t refused {config}: {test.stderr.strip()}")
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            if self._wait_listening():
                return self
            self.stop()
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"sshd for {self.name} did not start: {' '.join(tail)}")

    def _wait_listening(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            with socket.socket() as s, contextlib.suppress(OSError):
                s.settimeout(0.5)
                s.connect(("127.0.0.1", self.port))
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        """The listener by its PID (sessions it forked end with their connections)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass(frozen=True, slots=True)
class Result:
    status: int
    stdout: str
    stderr: str

    def tail(self) -> str:
        return " | ".join((self.stderr or self.stdout).strip().splitlines()[-3:])


class SshError(RuntimeError):
    """A host could not be reached or a command on it failed (one line)."""


class SshHost:
    """The harness's connection to one host (see the module docstring)."""

    def __init__(
        self, name: str, address: str, port: int, *, user: str, key: Path, known_hosts: Path
    ) -> None:
        self.name = name
        self.address = address
        self.port = port
        self.user = user
        self.client = paramiko.SSHClient()
        self.client.load_host_keys(str(known_hosts))
        self.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            self.client.connect(
                address,
                port=port,
                username=user,
                key_filename=str(key),
                allow_agent=False,
                look_for_keys=False,
                timeout=CONNECT_TIMEOUT_SECS,
            )
        except (OSError, paramiko.SSHException) as exc:
            self.client.close()
            raise SshError(f"cannot reach {name} at {user}@{address}:{port}: {exc}") from None
        self._sftp: paramiko.SFTPClient | None = None
        self._testinfra: Any = None

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp

    @property
    def testinfra(self) -> Any:
        """A testinfra Host over this (host-key-checked) connection."""
        if self._testinfra is None:
            from testinfra.backend.paramiko import ParamikoBackend
            from testinfra.host import Host

            backend = ParamikoBackend(f"paramiko://{self.user}@{self.address}:{self.port}")
            # Its own client would accept any host key (WarningPolicy): hand it ours.
            backend.client = self.client
            self._testinfra = Host(backend)
        return self._testinfra

    def run(self, cmd: str, *, timeout: float = 60.0) -> Result:
        """`cmd` run by the host's shell; its status and output (never raises on status)."""
        try:
            _in, out, err = self.client.exec_command(cmd, timeout=timeout)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
            status = out.channel.recv_exit_status()
        except (OSError, paramiko.SSHException) as exc:
            raise SshError(f"{self.name}: {cmd.split()[0]}…: {exc}") from None
        return Result(status, stdout, stderr)

    def check(self, cmd: str, *, timeout: float = 60.0) -> str:
        res = self.run(cmd, timeout=timeout)
        if res.status != 0:
            raise SshError(f"{self.name}: `{cmd}` exited {res.status}: {res.tail()}")
        return res.stdout

    def put(self, data: bytes, path: str, mode: int = 0o644) -> None:
        """Write `path` on the host atomically (a temp file, then rename)."""
        tmp = f"{path}.tmp-harness"
        with self.sftp.open(tmp, "wb") as f:
            f.write(data)
        self.sftp.chmod(tmp, mode)
        self.sftp.posix_rename(tmp, path)

    def read(self, path: str, offset: int = 0) -> bytes | None:
        """`path` from byte `offset` on; None when it does not exist."""
        try:
            with self.sftp.open(path, "rb") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return None

    def close(self) -> None:
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
        self.client.close()


__all__ = [
    "PRIVSEP_DIR",
    "PrivateSshd",
    "Result",
    "SshError",
    "SshHost",
    "keygen",
    "login_script",
    "missing_tools",
]
