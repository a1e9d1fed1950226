"""A control plane as a real process, with everything it needs on disk.

`CpEnv.create(dir, hosts)` lays out a fleet CA and server cert (harness.pki), a
trust.json, a signed fleet release published on an HTTPS forge with its own CA
(harness.forge), and the build-time fallback artifact; `CpEnv.start()` runs
`nixfleet-control-plane serve` on 127.0.0.1 and waits until it listens. Tests, the
local-fleet backend and benchmarks share it. Every process is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .fleetgen import HostDecl, ReleaseKit, ci_commit, fleet_doc, revocations_doc
from .forge import Forge, ForgeTls
from .pki import AgentCert, CertPaths, Pki

CN_SUFFIX = "fleet.test"
READY_LINE = "control plane listening"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming what was awaited."""
    start = time.monotonic()
    last: Any = None
    while time.monotonic() - start < timeout:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"{what}: not true after {time.monotonic() - start:.1f} s (last: {last!r})")


@dataclass
class CpProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def lines(self, needle: str) -> list[str]:
        return [ln for ln in self.log().splitlines() if needle in ln]

    def wait_log(self, pattern: str, timeout: float = 15.0) -> str:
        rx = re.compile(pattern)

        def found() -> str | None:
            return next((ln for ln in self.log().splitlines() if rx.search(ln)), None)

        line: str = wait_until(found, timeout, f"log line /{pattern}/")
        return line

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass
class CpEnv:
    dir: Path
    pki: Pki
    kit: ReleaseKit
    forge: Forge | None
    hosts: dict[str, HostDecl]
    db_path: Path
    trust_path: Path
    releases: Path
    port: int = field(default_factory=free_port)
    extra_args: list[str] = field(default_factory=list)
    processes: list[CpProcess] = field(default_factory=list)
    release_count: int = 0

    @classmethod
    def create(
        cls, dir: Path, hosts: Mapping[str, HostDecl], *, with_forge: bool = True
    ) -> CpEnv:
        dir.mkdir(parents=True, exist_ok=True)
        pki = Pki.create(dir / "pki", cn_suffix=CN_SUFFIX)
        kit = ReleaseKit()
        releases = dir / "forge"
        releases.mkdir(exist_ok=True)
        forge = None
        if with_forge:
            forge = Forge.start(releases, tls=ForgeTls.create(dir / "forge-tls"))
        trust_path = dir / "trust.json"
        trust_path.write_text(json.dumps(kit.trust()))
        decls = {
            name: HostDecl(
                channel=d.channel, closure=d.closure, tags=d.tags,
                pubkey=d.pubkey or pki.host_key(name).public_line,
            )
            for name, d in hosts.items()
        }
        return cls(dir=dir, pki=pki, kit=kit, forge=forge, hosts=decls,
                   db_path=dir / "state" / "state.db", trust_path=trust_path, releases=releases)

    # --- releases --------------------------------------------------------------------

    def publish(
        self,
        hosts: Mapping[str, HostDecl] | None = None,
        *,
        signed_at: datetime | None = None,
        name: str = "fleet.resolved.json",
        **fleet_kw: Any,
    ) -> tuple[bytes, bytes]:
        """Sign a fleet release and put it on the forge (as CI's release commit does)."""
        if hosts is not None:
            self.hosts.update(hosts)
        self.release_count += 1
        doc = fleet_doc(self.hosts, signed_at=signed_at or datetime.now(UTC),
                        ci_commit=ci_commit(self.release_count), **fleet_kw)
        raw, sig = self.kit.sign(doc)
        (self.releases / name).write_bytes(raw)
        (self.releases / f"{name}.sig").write_bytes(sig)
        return raw, sig

    def publish_revocations(self, entries: Mapping[str, datetime]) -> None:
        raw, sig = self.kit.sign(
            revocations_doc(entries, signed_at=datetime.now(UTC), ci_commit=ci_commit(999))
        )
        (self.releases / "revocations.json").write_bytes(raw)
        (self.releases / "revocations.json.sig").write_bytes(sig)

    def write_build_time(self, raw: bytes, sig: bytes) -> tuple[Path, Path]:
        art, sigp = self.dir / "build-time.json", self.dir / "build-time.json.sig"
        art.write_bytes(raw)
        sigp.write_bytes(sig)
        return art, sigp

    # --- the process ------------------------------------------------------------------

    def args(self, *, forge: bool = True, revocations: bool = False) -> list[str]:
        argv = [
            "serve",
            "--listen", f"127.0.0.1:{self.port}",
            "--tls-cert", str(self.pki.server.cert),
            "--tls-key", str(self.pki.server.key),
            "--client-ca", str(self.pki.ca.cert),
            "--trust-file", str(self.trust_path),
            "--db-path", str(self.db_path),
            "--agent-cn-suffix", CN_SUFFIX,
            "--fleet-ca-cert", str(self.pki.ca.cert),
            "--fleet-ca-key", str(self.pki.ca.key),
            "--tick-interval-secs", "1",
            "--sweep-interval-secs", "1",
            "--poll-interval-secs", "2",
        ]  # fmt: skip
        if forge and self.forge is not None:
            argv += ["--channel-refs-artifact-url", self.forge.url("fleet.resolved.json"),
                     "--upstream-ca", str(self.forge.ca_cert)]
            if revocations:
                argv += ["--revocations-artifact-url", self.forge.url("revocations.json")]
        return argv + self.extra_args

    def start(
        self,
        args: Sequence[str] | None = None,
        *,
        wait: bool = True,
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> CpProcess:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        log_path = self.dir / f"cp-{len(self.processes)}.log"
        full_env = {**os.environ, **(env or {})}
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "nixfleet.cp.main", *(args or self.args())],
                stdout=log, stderr=subprocess.STDOUT, env=full_env,
            )
        cp = CpProcess(proc=proc, log_path=log_path, port=self.port)
        self.processes.append(cp)
        if wait:
            wait_until(lambda: READY_LINE in cp.log() or proc.poll() is not None,
                       timeout, "control plane start")
            if proc.poll() is not None:
                raise RuntimeError(f"control plane exited {proc.returncode}:\n{cp.log()}")
        return cp

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def agent(self, name: str) -> AgentCert:
        return self.pki.issue_agent(name)

    def operator(self) -> CertPaths:
        return self.pki.issue_operator()

    def curl(self, path: str, *extra: str, cert: CertPaths | AgentCert | None = None) -> list[str]:
        argv = ["curl", "-sk", "--max-time", "10", "--cacert", str(self.pki.ca.cert)]
        if cert is not None:
            argv += ["--cert", str(cert.cert), "--key", str(cert.key)]
        return [*argv, *extra, self.url(path)]

    def close(self) -> None:
        for cp in self.processes:
            cp.stop()
        if self.forge is not None:
            self.forge.stop()


