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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from fleet_sim.fleetgen import (
    TAMPER_OFFSETS,
    HostDecl,
    ReleaseKit,
    Signer,
    ci_commit,
    fake_closure,
    fleet_doc,
    flip,
    meta,
    revocations_doc,
)
from nixfleet.agent.csr import build_csr
from nixfleet.core import wire
from nixfleet.core.closure import ClosureHash
from nixfleet.core.signing import ED25519
from nixfleet.core.token import dump_token, mint_token

from .forge import Forge, ForgeTls
from .launch import launcher
from .pki import AgentCert, CertPaths, HostKey, Pki

TABLES = (
    "pending_confirms",
    "cert_revocations",
    "token_replay",
    "rollouts",
    "host_rollout_state",
    "host_reports",
    "quarantined_closures",
    "refinery_schema_history",
)

CN_SUFFIX = "fleet.test"
NONCES_FILE = "bootstrap-nonces.json"
READY_LINE = "control plane listening"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _tampered(tamper: str | None, what: str, raw: bytes, sig: bytes) -> tuple[bytes, bytes]:
    """(`raw`, `sig`) with `tamper`'s byte flipped when it names `what`
    (`artifact…` or `manifest…`)."""
    if tamper == what or tamper == f"{what}-payload":
        return flip(raw, TAMPER_OFFSETS[tamper]), sig
    if tamper == f"{what}-signature":
        return raw, flip(sig, TAMPER_OFFSETS[tamper])
    return raw, sig


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
    launcher: list[str] = field(default_factory=lambda: launcher(None))
    """The argv prefix that runs `nixfleet.cp.main` (`harness.launch` applies a mutant)."""

    @classmethod
    def create(
        cls,
        dir: Path,
        hosts: Mapping[str, HostDecl],
        *,
        with_forge: bool = True,
        release_key: str = ED25519,
        signer: Signer | None = None,
    ) -> CpEnv:
        """`release_key`: the algorithm of CI's release key (`ReleaseKit`); `signer`:
        where that key lives (default: the seeded software key; the `tpm` backend's is
        a TPM)."""
        dir.mkdir(parents=True, exist_ok=True)
        pki = Pki.create(dir / "pki", cn_suffix=CN_SUFFIX)
        kit = ReleaseKit(algorithm=release_key, signer=signer)
        releases = dir / "forge"
        releases.mkdir(exist_ok=True)
        forge = None
        if with_forge:
            forge = Forge.start(releases, tls=ForgeTls.create(dir / "forge-tls"))
        trust_path = dir / "trust.json"
        trust_path.write_text(json.dumps(kit.trust()))
        decls = {
            name: HostDecl(
                channel=d.channel,
                closure=d.closure,
                tags=d.tags,
                pubkey=d.pubkey or pki.host_key(name).public_line,
            )
            for name, d in hosts.items()
        }
        return cls(
            dir=dir,
            pki=pki,
            kit=kit,
            forge=forge,
            hosts=decls,
            db_path=dir / "state" / "state.db",
            trust_path=trust_path,
            releases=releases,
        )

    # --- releases --------------------------------------------------------------------

    def publish(
        self,
        hosts: Mapping[str, HostDecl] | None = None,
        *,
        signed_at: datetime | None = None,
        name: str = "fleet.resolved.json",
        manifests: bool = True,
        tamper: str | None = None,
        **fleet_kw: Any,
    ) -> tuple[bytes, bytes]:
        """Sign a fleet release and put it on the forge (as CI's release commit does).
        `tamper` (`fleetgen.TAMPER_OFFSETS`) flips one byte of what is written; the
        release as signed is returned all the same."""
        if hosts is not None:
            self.hosts.update(hosts)
        self.release_count += 1
        doc = fleet_doc(
            self.hosts,
            signed_at=signed_at or datetime.now(UTC),
            ci_commit=ci_commit(self.release_count),
            **fleet_kw,
        )
        raw, sig = self.kit.sign(doc)
        # The manifests first, each file replaced atomically: a CP polling meanwhile
        # must never dispatch a rollout whose manifest is not there yet, nor read a
        # half-written artifact.
        if manifests:
            self.rollouts_dir.mkdir(exist_ok=True)
            for rid, body, manifest_sig in self.kit.sign_manifests(raw).values():
                body, manifest_sig = _tampered(tamper, "manifest", body, manifest_sig)
                _write_atomic(self.rollouts_dir / f"{rid}.json", body)
                _write_atomic(self.rollouts_dir / f"{rid}.json.sig", manifest_sig)
        served, served_sig = _tampered(tamper, "artifact", raw, sig)
        _write_atomic(self.releases / name, served)
        _write_atomic(self.releases / f"{name}.sig", served_sig)
        return raw, sig

    @property
    def rollouts_dir(self) -> Path:
        """CI's signed rollout manifests, served by the CP's `--rollouts-dir`."""
        return self.dir / "rollouts"

    def publish_revocations(
        self, entries: Mapping[str, datetime], *, reasons: Mapping[str, str] | None = None
    ) -> None:
        """Sign the revocations sidecar and put it on the forge, signature first, each
        file replaced atomically (a CP polling meanwhile never reads a torn one)."""
        doc = revocations_doc(
            entries, signed_at=datetime.now(UTC), ci_commit=ci_commit(999), reasons=reasons
        )
        raw, sig = self.kit.sign(doc)
        _write_atomic(self.releases / "revocations.json.sig", sig)
        _write_atomic(self.releases / "revocations.json", raw)

    def publish_nonces(self, entries: Sequence[Mapping[str, str]] | None) -> None:
        """Sign the bootstrap-nonces allowlist (`{nonce, hostname, expiresAt}` entries,
        as `nixfleet mint-token` prints them) and put it on the forge, signature first,
        each file replaced atomically; None withdraws it (the forge answers 404)."""
        art, sigp = self.releases / NONCES_FILE, self.releases / f"{NONCES_FILE}.sig"
        if entries is None:
            art.unlink(missing_ok=True)
            sigp.unlink(missing_ok=True)
            return
        doc = {
            "schemaVersion": 1,
            "bootstrapNonces": [dict(e) for e in entries],
            "meta": meta(datetime.now(UTC), ci_commit(998)),
        }
        raw, sig = self.kit.sign(doc)
        _write_atomic(sigp, sig)
        _write_atomic(art, raw)

    def write_build_time(self, raw: bytes, sig: bytes) -> tuple[Path, Path]:
        art, sigp = self.dir / "build-time.json", self.dir / "build-time.json.sig"
        art.write_bytes(raw)
        sigp.write_bytes(sig)
        return art, sigp

    # --- the process ------------------------------------------------------------------

    def args(
        self,
        *,
        forge: bool = True,
        revocations: bool = False,
        upstream_ca: bool = True,
        fleet_ca: bool = True,
        build_time: tuple[Path, Path] | None = None,
        audit_log: Path | None = None,
    ) -> list[str]:
        """`serve` flags for this environment. `upstream_ca=False` leaves the forge's
        private CA out (the CP then trusts only the system store / `SSL_CERT_FILE`);
        `fleet_ca=False` runs without `--fleet-ca-*` (seed 001 pre-flight 3)."""
        argv = [
            "serve",
            "--listen", f"127.0.0.1:{self.port}",
            "--tls-cert", str(self.pki.server.cert),
            "--tls-key", str(self.pki.server.key),
            "--client-ca", str(self.pki.ca.cert),
            "--trust-file", str(self.trust_path),
            "--db-path", str(self.db_path),
            "--agent-cn-suffix", CN_SUFFIX,
            "--tick-interval-secs", "1",
            "--sweep-interval-secs", "1",
            "--poll-interval-secs", "2",
            "--rollouts-dir", str(self.rollouts_dir),
        ]  # fmt: skip
        if fleet_ca:
            argv += [
                "--fleet-ca-cert",
                str(self.pki.ca.cert),
                "--fleet-ca-key",
                str(self.pki.ca.key),
            ]
        if forge and self.forge is not None:
            argv += ["--channel-refs-artifact-url", self.forge.url("fleet.resolved.json")]
            if upstream_ca:
                argv += ["--upstream-ca", str(self.forge.ca_cert)]
            if revocations:
                argv += ["--revocations-artifact-url", self.forge.url("revocations.json")]
        if build_time is not None:
            argv += ["--artifact", str(build_time[0]), "--signature", str(build_time[1])]
        if audit_log is not None:
            argv += ["--audit-log", str(audit_log)]
        return argv + self.extra_args

    def start(
        self,
        args: Sequence[str] | None = None,
        *,
        wait: bool = True,
        env: Mapping[str, str] | None = None,
        env_remove: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> CpProcess:
        """Run the CP; its stdout and stderr go to `cp-<n>.log` (the "journal").

        `env` adds variables, `env_remove` drops inherited ones (e.g. `SSL_CERT_FILE`).
        With `wait`, returns once the CP logs `control plane listening` and raises if
        it exits first."""
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        log_path = self.dir / f"cp-{len(self.processes)}.log"
        full_env = {k: v for k, v in os.environ.items() if k not in env_remove}
        full_env.update(env or {})
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*self.launcher, "nixfleet.cp.main", *(args or self.args())],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
            )
        cp = CpProcess(proc=proc, log_path=log_path, port=self.port)
        self.processes.append(cp)
        if wait:
            wait_until(
                lambda: READY_LINE in cp.log() or proc.poll() is not None,
                timeout,
                "control plane start",
            )
            if proc.poll() is not None:
                raise RuntimeError(f"control plane exited {proc.returncode}:\n{cp.log()}")
        return cp

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    @property
    def state_dir(self) -> Path:
        """The directory of state.db (+ -wal, -shm), as /var/lib/nixfleet-cp is."""
        return self.db_path.parent

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


MakeEnv = Callable[..., CpEnv]
"""A test fixture's `make_env(hosts, with_forge=True) -> CpEnv`."""


# --- the operators' tools: bash, curl, jq, sqlite3 (shared by tests and benchmarks) ---


def sh(cmd: str, *, cwd: Path | None = None, timeout: float = 30.0) -> str:
    """Run a runbook command line with bash; return its stdout (fails on exit ≠ 0)."""
    res = subprocess.run(
        ["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, f"{cmd!r} exited {res.returncode}: {res.stderr}"
    return res.stdout


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


def curl(argv: Sequence[str], *, timeout: float = 20.0) -> Reply:
    """Run a `CpEnv.curl` argv; status 0 means no HTTP response at all."""
    res = subprocess.run(
        [*argv[:-1], "-w", "\n%{http_code}", argv[-1]],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    body, _, code = res.stdout.rpartition("\n")
    return Reply(int(code or 0), body)


def post(
    env: CpEnv,
    path: str,
    body: Any,
    *,
    cert: CertPaths | AgentCert | None,
    headers: Sequence[str] = (),
) -> Reply:
    """POST JSON with curl (no protocol header, as an operator's curl sends none)."""
    data = body if isinstance(body, str) else json.dumps(body)
    extra: list[str] = ["-H", "content-type: application/json", "--data-binary", data]
    for h in headers:
        extra += ["-H", h]
    return curl(env.curl(path, *extra, cert=cert))


def sqlite3(db: Path, sql: str, *, timeout: float = 10.0) -> str:
    """`sqlite3 <db> "<sql>"`, as the cookbook runs it.

    The sqlite3 shell waits for no lock: if the CP happens to hold the write lock at
    that instant it says "database is locked", and the operator runs it again; so do
    we, until the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        res = subprocess.run(["sqlite3", str(db), sql], capture_output=True, text=True)
        if res.returncode == 0:
            return res.stdout
        if "locked" not in res.stderr or time.monotonic() > deadline:
            raise AssertionError(f"sqlite3 {sql!r}: {res.stderr}")
        time.sleep(0.05)


def table_counts(db: Path) -> dict[str, int]:
    out = sqlite3(db, "; ".join(f"SELECT '{t}', count(*) FROM {t}" for t in TABLES) + ";")
    counts = {}
    for line in out.splitlines():
        name, _, n = line.partition("|")
        counts[name] = int(n)
    return counts


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def signed_at_of(raw: bytes) -> str:
    """`meta.signedAt` of a signed fleet artifact's bytes."""
    return str(json.loads(raw)["meta"]["signedAt"])


def channel_signed_at(env: CpEnv) -> str:
    """The `signed_at` the CP serves for channel `stable`, read as seed 001 verifies it."""
    op = env.operator()
    cmd = (
        f"curl -sk --cacert {env.pki.ca.cert} --cert {op.cert} --key {op.key} "
        f"https://127.0.0.1:{env.port}/v1/channels/stable | jq -r '.signed_at'"
    )
    return sh(cmd).strip()


def assert_clean_log(cp: CpProcess) -> None:
    """No traceback, no 500 and no aiohttp handler error in the CP's log."""
    text = cp.log()
    for bad in ("Traceback", "Error handling request", "Unhandled exception", " 500 "):
        assert bad not in text, f"{bad!r} in the CP log:\n{text}"


def count_lines(cp: CpProcess, needle: str) -> int:
    return len(cp.lines(needle))


def wait_more_lines(cp: CpProcess, needle: str, seen: int, timeout: float = 15.0) -> None:
    wait_until(lambda: count_lines(cp, needle) > seen, timeout, f"another {needle!r} log line")


# --- agent bodies --------------------------------------------------------------------


# Encoded by the agent's own wire codecs, so a body sent by hand is one an agent sends.
AGENT_VERSION = "test"
REPORTED_AT = datetime(2026, 1, 1, tzinfo=UTC)


def _generation(closure: str, boot_id: str) -> wire.GenerationRef:
    return wire.GenerationRef(closure_hash=ClosureHash(closure), boot_id=boot_id)


def checkin_body(host: str, closure: str, **extra: Any) -> dict[str, Any]:
    """`host`'s checkin running `closure`; `extra` wire keys added or overriding."""
    current = _generation(closure, "boot-1")
    request = wire.CheckinRequest(
        hostname=host, agent_version=AGENT_VERSION, current_generation=current
    )
    return {**wire.dump_checkin_request(request), **extra}


def confirm_body(host: str, rollout: str, closure: str, wave: int = 0) -> dict[str, Any]:
    request = wire.ConfirmRequest(
        hostname=host, rollout=rollout, wave=wave, generation=_generation(closure, "boot-2")
    )
    return wire.dump_confirm_request(request)


def report_body(
    host: str, event: str, details: Mapping[str, Any], *, rollout: str | None = None
) -> dict[str, Any]:
    """An unsigned report of `event` from `host`."""
    request = wire.ReportRequest(
        hostname=host,
        agent_version=AGENT_VERSION,
        occurred_at=REPORTED_AT,
        rollout=rollout,
        event=event,
        details=details,
    )
    return wire.dump_report_request(request)


async def aio_post(
    env: CpEnv,
    path: str,
    body: Any,
    *,
    identity: CertPaths | AgentCert | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any]:
    """POST JSON with aiohttp (as an agent does: protocol header, its own client cert)."""
    ctx = env.pki.client_context(identity)
    hdrs = {"X-Nixfleet-Protocol": "1", **(headers or {})}
    async with (
        aiohttp.ClientSession() as session,
        session.post(env.url(path), json=body, ssl=ctx, headers=hdrs) as resp,
    ):
        text = await resp.text()
        try:
            return resp.status, json.loads(text) if text else None
        except ValueError:
            return resp.status, text


def declared(*names: str, generation: int = 1, channel: str = "stable") -> dict[str, HostDecl]:
    """Hosts on `channel`, each declaring `fake_closure(name, generation)`."""
    return {n: HostDecl(channel=channel, closure=fake_closure(n, generation)) for n in names}


def enroll_body(
    env: CpEnv,
    hostname: str,
    *,
    host_key: HostKey | None = None,
    now: datetime | None = None,
    validity: timedelta = timedelta(hours=24),
) -> dict[str, Any]:
    """`{token, csrPem}` as a new host sends it: a bootstrap token minted with the
    fleet's org root key (`nixfleet mint-token`) bound to `host_key` (default: the
    host's own SSH key), and a CSR with CN = hostname signed by that key."""
    hk = host_key if host_key is not None else env.pki.host_key(hostname)
    token = mint_token(
        hostname=hostname,
        expected_pubkey_fingerprint=hk.fingerprint,
        org_root_key=env.kit.org_root_key,
        now=now or datetime.now(UTC),
        nonce_bytes=os.urandom(16),
        validity=validity,
    )
    return {"token": dump_token(token), "csrPem": build_csr(hk.private_key.read_bytes(), hostname)}
