"""Helpers for the agent tests: fake NixOS systems built by real nix, a signed binary
cache, a scripted control plane (aiohttp, mTLS, in a thread) and the agent process.

Fake systems live in the real `/nix/store` (the agent must execute their
`bin/switch-to-configuration`); every test's closures carry its own temp paths in
their content, so no two tests share a store path. Their switch script points the
test's current-system link at its own closure, logs each call to `<link>.calls`,
and can be told to fail, to point the link elsewhere, or to wait for a file.
Processes are started with `subprocess.Popen` and stopped by their PID.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleet_sim.fleetgen import ReleaseKit, ci_commit
from harness.cpenv import free_port, wait_until
from harness.pki import AgentCert, Pki
from nixfleet.core.canonical import sha256_hex
from nixfleet.core.hostkey import host_public_key_from
from nixfleet.core.timeutil import format_instant
from nixfleet.core.wire import (
    attestation_payload,
    parse_report_request,
    report_evidence_payload,
)

NIX_CONFIG = "substituters =\nexperimental-features = nix-command\ndownload-attempts = 1"

__all__ = ["free_port", "wait_until"]  # re-exported for the tests


def nix_env(tmp: Path) -> dict[str, str]:
    """The environment every nix command (and the agent) runs with in tests."""
    env = dict(os.environ)
    env["NIX_CONFIG"] = NIX_CONFIG
    env["XDG_CACHE_HOME"] = str(tmp / "xdg-cache")
    return env


def sh(argv: Sequence[str], env: Mapping[str, str], *, check: bool = True) -> str:
    res = subprocess.run(list(argv), env=dict(env), capture_output=True, text=True, timeout=120)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr}")
    return res.stdout.strip()


# --- fake systems -------------------------------------------------------------------------

SWITCH_SCRIPT = """#!/bin/sh
self=$(cd "$(dirname "$0")/.." && pwd -P)
echo "$self $1" >> {link}.calls
{wait}
if [ "$1" = boot ]; then echo "$self" > {link}.boot; exit 0; fi
{body}
"""

SYSTEM_NIX = r"""
{ gen, script, tag, kernel ? "" }:
let
  pkg = derivation {
    name = "pkg-${gen}"; system = builtins.currentSystem; builder = "/bin/sh";
    PATH = "/usr/bin:/bin"; inherit gen tag;
    args = [ "-c" "mkdir -p $out; echo $gen > $out/data" ];
  };
in derivation {
  name = "nixos-system-host-${gen}"; system = builtins.currentSystem; builder = "/bin/sh";
  PATH = "/usr/bin:/bin"; inherit pkg script kernel;
  args = [ "-c" ''
    mkdir -p $out/bin
    ln -s $pkg $out/sw
    printf '%s' "$script" > $out/bin/switch-to-configuration
    chmod +x $out/bin/switch-to-configuration
    if [ -n "$kernel" ]; then printf '%s' "$kernel" > $out/kernel; fi
  '' ];
}
"""


@dataclass
class FakeSystems:
    """Makes fake system closures whose switch script drives `link`."""

    dir: Path
    link: Path
    env: dict[str, str]

    def script(self, *, fail: bool = False, point_at: str | None = None,
               wait_for: Path | None = None) -> str:  # fmt: skip
        if fail:
            body = 'echo "switch-to-configuration: unit foo.service failed" >&2\nexit 3'
        elif point_at is not None:
            body = f"ln -sfn {point_at} {self.link}"
        else:
            body = f'ln -sfn "$self" {self.link}'
        wait = f"while [ ! -e {wait_for} ]; do sleep 0.05; done" if wait_for else ""
        return SWITCH_SCRIPT.format(link=self.link, body=body, wait=wait)

    def add(self, gen: str, *, kernel: str | None = None, **kw: Any) -> str:
        """A content-addressed closure via `nix-store --add` (no signature needed)."""
        src = self.dir / f"src-{gen}" / f"nixos-system-host-{gen}"
        (src / "bin").mkdir(parents=True, exist_ok=True)
        script = src / "bin" / "switch-to-configuration"
        script.write_text(self.script(**kw))
        script.chmod(0o755)
        if kernel is not None:
            (src / "kernel").write_text(kernel)
        return sh(["nix-store", "--add", str(src)], self.env)

    def build(self, gen: str, *, kernel: str = "", **kw: Any) -> str:
        """An input-addressed two-path closure (system → pkg) via `nix-build`."""
        nix_file = self.dir / "system.nix"
        self.dir.mkdir(parents=True, exist_ok=True)
        nix_file.write_text(SYSTEM_NIX)
        return sh(
            ["nix-build", "--no-out-link", str(nix_file), "--argstr", "gen", gen,
             "--argstr", "script", self.script(**kw), "--argstr", "kernel", kernel,
             "--argstr", "tag", str(self.dir)],
            self.env,
        )  # fmt: skip

    def calls(self) -> list[str]:
        path = Path(f"{self.link}.calls")
        return path.read_text().splitlines() if path.exists() else []

    def current(self) -> str:
        return os.readlink(self.link)


def closure_paths(path: str, env: Mapping[str, str]) -> list[str]:
    return sh(["nix-store", "-qR", path], env).split()


def delete_from_store(path: str, env: Mapping[str, str]) -> None:
    """Remove a closure from the local store so that it must come from a cache."""
    sh(["nix-store", "--delete", *closure_paths(path, env)], env)
    assert not os.path.exists(path)


def set_profile(profile: Path, path: str, env: Mapping[str, str]) -> None:
    profile.parent.mkdir(parents=True, exist_ok=True)
    sh(["nix-env", "--profile", str(profile), "--set", path], env)


def generations(profile: Path) -> list[int]:
    """Generation numbers from the `<profile>-N-link` symlinks (environment.md)."""
    rx = re.compile(rf"^{re.escape(profile.name)}-(\d+)-link$")
    return sorted(
        int(m.group(1)) for n in os.listdir(profile.parent) if (m := rx.match(n)) is not None
    )


def profile_target(profile: Path) -> str:
    return os.path.realpath(profile)


# --- binary cache --------------------------------------------------------------------------


@dataclass
class BinaryCache:
    dir: Path
    env: dict[str, str]
    key_name: str = "fleet-cache-1"
    server: subprocess.Popen[bytes] | None = None
    port: int = 0

    def __post_init__(self) -> None:
        (self.dir / "store").mkdir(parents=True, exist_ok=True)
        self.secret = self.dir / f"{self.key_name}.sec"
        self.public_file = self.dir / f"{self.key_name}.pub"
        sh(["nix-store", "--generate-binary-cache-key", self.key_name,
            str(self.secret), str(self.public_file)], self.env)  # fmt: skip

    @property
    def public_key(self) -> str:
        return self.public_file.read_text().strip()

    @property
    def file_url(self) -> str:
        return f"file://{self.dir / 'store'}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def push(self, path: str, *, secret: Path | None = None) -> None:
        """`nix copy` into the cache, signing with our key (or `secret`)."""
        key = secret if secret is not None else self.secret
        sh(["nix", "copy", "--to",
            f"{self.file_url}?compression=zstd&secret-key={key}", path], self.env)  # fmt: skip

    def serve(self) -> str:
        """Serve the cache over HTTP on 127.0.0.1; returns its URL."""
        self.port = free_port()
        self.server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
             "--directory", str(self.dir / "store")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: _port_open(self.port), 10, "http cache listening")
        return self.http_url

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            stop_process(self.server)
        self.server = None


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- signed manifests and targets -----------------------------------------------------------


def signed_manifest(
    kit: ReleaseKit, hosts: Mapping[str, str], *, signed_at: datetime, commit: int = 1
) -> tuple[str, bytes, bytes]:
    """A rollout manifest listing `hosts` (name → closure basename) at wave 0."""
    sha = ci_commit(commit)
    doc = {
        "schemaVersion": 1,
        "displayName": f"stable@{sha[:8]}",
        "channel": "stable",
        "channelRef": sha,
        "fleetResolvedHash": "0" * 64,
        "hostSet": [
            {"hostname": h, "waveIndex": 0, "targetClosure": c} for h, c in sorted(hosts.items())
        ],
        "healthGate": {},
        "complianceFrameworks": [],
        "disruptionBudgets": [],
        "meta": {
            "schemaVersion": 1,
            "signedAt": format_instant(signed_at),
            "ciCommit": sha,
            "signatureAlgorithm": "ed25519",
        },
    }
    raw, sig = kit.sign(doc)
    return sha256_hex(raw), raw, sig


def target(
    rollout_id: str,
    closure: str,
    *,
    signed_at: datetime,
    confirm_window_secs: int = 360,
    freshness_window_secs: int = 43200 * 60,
) -> dict[str, Any]:
    return {
        "closureHash": closure,
        "channelRef": rollout_id,
        "evaluatedAt": format_instant(datetime.now(UTC)),
        "rolloutId": rollout_id,
        "waveIndex": 0,
        "activate": {
            "confirmWindowSecs": confirm_window_secs,
            "confirmEndpoint": "/v1/agent/confirm",
        },
        "signedAt": format_instant(signed_at),
        "freshnessWindowSecs": freshness_window_secs,
    }


def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


# --- a scripted control plane -------------------------------------------------------------------


@dataclass
class FakeCp:
    """An mTLS CP that answers as told: a target once per `dispatch`, manifests from a
    dict, confirms with `confirm_status`, reports recorded. Runs in its own thread."""

    pki: Pki
    port: int = field(default_factory=free_port)
    manifests: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    confirm_status: int = 204
    """0: drop the connection without answering."""
    checkins: list[dict[str, Any]] = field(default_factory=list)
    confirms: list[dict[str, Any]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    manifest_gets: list[str] = field(default_factory=list)
    protocol_headers: set[str | None] = field(default_factory=set)
    checkin_ports: list[int] = field(default_factory=list)
    _queued: list[dict[str, Any]] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    def url(self, path: str = "") -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def dispatch(self, tgt: Mapping[str, Any]) -> None:
        self._queued.append(dict(tgt))

    # -- handlers --
    async def _checkin(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.checkin_ports.append(peer[1] if peer else 0)
        self.checkins.append(await request.json())
        body: dict[str, Any] = {"nextCheckinSecs": 60}
        if self._queued:
            body["target"] = self._queued.pop(0)
        return web.json_response(body)

    async def _confirm(self, request: web.Request) -> web.Response:
        self.confirms.append(await request.json())
        if self.confirm_status == 0 and request.transport is not None:
            request.transport.abort()  # no HTTP answer at all, as from a CP that died
        return web.Response(status=self.confirm_status or 503)

    async def _report(self, request: web.Request) -> web.Response:
        self.reports.append(await request.json())
        return web.json_response({"eventId": f"evt-{len(self.reports)}"})

    async def _manifest(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        self.manifest_gets.append(rid)
        if rid not in self.manifests:
            return web.json_response({"error": "not found"}, status=404)
        return web.Response(body=self.manifests[rid][0], content_type="application/json")

    async def _sig(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        if rid not in self.manifests:
            return web.json_response({"error": "not found"}, status=404)
        return web.Response(body=self.manifests[rid][1], content_type="application/octet-stream")

    @web.middleware
    async def _headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.protocol_headers.add(request.headers.get("X-Nixfleet-Protocol"))
        resp: web.StreamResponse = await handler(request)
        return resp

    def start(self) -> FakeCp:
        app = web.Application(middlewares=[self._headers])
        app.router.add_post("/v1/agent/checkin", self._checkin)
        app.router.add_post("/v1/agent/confirm", self._confirm)
        app.router.add_post("/v1/agent/report", self._report)
        app.router.add_get("/v1/rollouts/{rid}", self._manifest)
        app.router.add_get("/v1/rollouts/{rid}/sig", self._sig)
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def setup() -> None:
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            ctx = self.pki.server_context(require_client_cert=True)
            site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ctx)
            await site.start()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(setup())
            ready.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        assert ready.wait(10), "fake CP did not start"
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        runner = self._runner
        if runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def events(self) -> list[str]:
        return [r["event"] for r in self.reports]

    def report(self, event: str) -> dict[str, Any]:
        found = [r for r in self.reports if r["event"] == event]
        assert found, f"no {event} report in {self.events()}"
        return found[-1]


# --- the agent process ----------------------------------------------------------------------------


@dataclass
class AgentProc:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def count(self, needle: str) -> int:
        return self.log().count(needle)

    def wait_log(self, needle: str, timeout: float = 30.0, count: int = 1) -> None:
        wait_until(
            lambda: self.count(needle) >= count or self.proc.poll() is not None,
            timeout,
            f"agent log {needle!r} ×{count}",
        )
        assert self.count(needle) >= count, f"agent exited {self.proc.returncode}:\n{self.log()}"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_agent(argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> AgentProc:
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nixfleet.agent.main", *argv],
            stdout=log, stderr=subprocess.STDOUT, env=dict(env),
        )  # fmt: skip
    return AgentProc(proc=proc, log_path=log_path)


@dataclass
class Host:
    """One simulated host's files: link, profile, state dir, key, cert."""

    dir: Path
    name: str
    cert: AgentCert | None = None

    @property
    def link(self) -> Path:
        return self.dir / "current-system"

    @property
    def profile(self) -> Path:
        return self.dir / "profiles" / "system"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    def agent_args(self, *, cp_url: str, pki: Pki, trust: Path, poll: float = 1,
                   extra: Sequence[str] = ()) -> list[str]:  # fmt: skip
        hk = pki.host_key(self.name)
        cert = self.cert.cert if self.cert is not None else self.dir / "agent-cert.pem"
        return [
            "--control-plane-url", cp_url, "--machine-id", self.name,
            "--poll-interval", str(poll), "--trust-file", str(trust),
            "--ca-cert", str(pki.ca.cert), "--client-cert", str(cert),
            "--state-dir", str(self.state), "--ssh-host-key-file", str(hk.private_key),
            "--health-checks-config", str(self.dir / "health-checks.json"),
            "--system-profile", str(self.profile), "--current-system-link", str(self.link),
            "--booted-system-link", str(self.dir / "booted-system"),
            *extra,
        ]  # fmt: skip


# --- checking signatures the CP would check ---------------------------------------------


def host_public_key(pki: Pki, name: str) -> Ed25519PublicKey:
    raw = host_public_key_from(pki.host_key(name).public_key.read_bytes()).raw
    return Ed25519PublicKey.from_public_bytes(raw)


def report_signature_ok(report: Mapping[str, Any], key: Ed25519PublicKey) -> bool:
    req = parse_report_request(dict(report))
    if req.signature is None:
        return False
    try:
        key.verify(base64.b64decode(req.signature), report_evidence_payload(req))
    except Exception:
        return False
    return True


def attestation_ok(checkin: Mapping[str, Any], key: Ed25519PublicKey) -> bool:
    sig = checkin.get("attestationSignature")
    if not sig:
        return False
    payload = attestation_payload(
        hostname=checkin["hostname"],
        rollout_id=checkin["lastEvaluatedTarget"]["rolloutId"],
        last_confirmed_at=checkin["lastConfirmedAt"],
    )
    try:
        key.verify(base64.b64decode(sig), payload)
    except Exception:
        return False
    return True


def now() -> datetime:
    return datetime.now(UTC)
