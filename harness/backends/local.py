"""The `local` backend: the facade over real processes on this machine
(harness.localfleet): one control plane and `shape.local_hosts` agents, each a host
with its own Nix store in a mount namespace, a signed binary cache and a signed forge.

- Agents poll every 2 s; the CP's confirm window is `shape.confirm_window_polls` polls,
  but never under the 30 s the CP accepts. Waves and policy come from the shape; the
  soak too, scaled to the 2 s poll in whole minutes (0 under 30 polls).
- Each agent reaches the CP through its own TCP proxy (harness.tcpproxy), so
  `partition` really cuts it off: connections dropped and refused for the duration.
- Every host runs one exec health probe, `app` (every 5 s, the agent's floor): it fails
  while the running closure is one `release(unhealthy=…)` named for that host. The CP
  marks such a host Failed after `--health-failure-secs` of failures: 10 s here (5
  polls, the least the CP accepts), 60 s (one poll) on `sim`.
- `slow_activation` is built into the next releases' closures: their switch sleeps,
  lock held, before it moves the link (the agents' switch timeout is the confirm
  window less 10 s, 20 s by default, which the CP is told: `--agent-switch-timeout-secs`).
- With a mutant, the CP and every agent start through `python -m harness.launch`, so
  the bug is inside the real processes.
- The history is read from the CP's and agents' logs plus the backend's own actions
  (harness.backends.loghistory); `final()` reads the hosts' links and the CP's tables.
- `operator(cmd)` is a bash on the CP's host (harness.opshell documents its variables).
- Every agent finds `nixos-rebuild` on its PATH as NixOS 26.05's `nixos-rebuild-ng`
  answers the pre-26.05 `--system` flag: exit 2, `unrecognized arguments: --system`
  (seed 000). The agent must never need it (decisions: `nix-env --set`, then the
  closure's own `switch-to-configuration`).
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import shutil
import signal
import sqlite3
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_sim.fleetgen import ChannelDecl, Signer, planned_channel, seeded_key, wave_plan
from harness.cpenv import CN_SUFFIX, NONCES_FILE, wait_until
from harness.fleet import (
    AGENT_KILL,
    AGENT_START,
    CACHE_MODES,
    CALL,
    CP_CRASH,
    CP_STOP,
    CP_WIPE,
    FAULT,
    FORGE_TRUST,
    NONCES,
    OPERATOR,
    ORG_ROOT,
    RELEASE,
    REVOKE,
    TAMPER_MODES,
    CpExited,
    Final,
    History,
    HostDiagnosis,
    HostFinal,
    NotAvailable,
    Reply,
    RolloutFinal,
    Shape,
    check_mode,
    flip_closure_digit,
    wait_loop,
)
from harness.forge import ForgeMode
from harness.launch import launcher
from harness.localfleet import LocalFleet, host_names
from harness.nshost import namespaces_available
from harness.opshell import OperatorShell
from harness.pki import AgentCert, CertPaths
from harness.runner import BackendUnavailable
from harness.tcpproxy import Proxy, ProxyHub
from nixfleet.agent.csr import build_csr
from nixfleet.core.agent import MIN_CONFIRM_WINDOW_SECS
from nixfleet.core.signing import ECDSA_P256, public_key_json
from nixfleet.core.timeutil import parse_instant
from nixfleet.core.token import (
    NONCE_BYTES,
    dump_token,
    mint_token,
    nonce_allowlist_entry,
    parse_token,
)
from nixfleet.cp.config import MIN_HEALTH_FAILURE_SECS
from nixfleet.cp.issuance import agent_cn

from .loghistory import LogHistory

POLL_SECS = 2.0
WAIT_STEP_SECS = 0.2
CHANNEL = "stable"
FIRST_CHECKIN = ("checkin ok", "checkin failed", "enroll: control plane not ready", "enroll failed")
"""An agent's first attempt, answered or not (with a mutant the CP may refuse even its
enrolment, e.g. never ready)."""
ENROLL_TIMEOUT_SECS = 60.0
LOG_TAIL = 50
"""`Fleet.diagnose_host`: the recipe's `journalctl -u nixfleet-agent -n 50`."""
HEALTH_FAILURE_SECS = MIN_HEALTH_FAILURE_SECS
"""The CP's `--health-failure-secs`: 5 polls, the least it accepts."""
WIPE = "rm -rf state.db state.db-wal state.db-shm"
"""Seed 001 step 2, run in the CP's state dir."""
EXPIRED_CERT_VALIDITY_SECS = 600
"""`Fleet.expire_cert`: the 10-minute agent certificate of the bootstrap-token runbook,"""
EXPIRED_AGO = timedelta(days=3)
"""issued this long ago."""
PROBE = (
    's=$(cat {slow} 2>/dev/null || echo 0); a=$(( $(date +%s) - $(stat -c %Y {link}) )); '
    'if [ "$a" -lt "$s" ]; then sleep $((s - a)); fi; '
    'b=$(basename "$(readlink {link})"); n=${{b#*-}}; '
    'if grep -qxF "$n" {marks} 2>/dev/null; then echo "closure $n is unhealthy" >&2; exit 1; fi'
)
"""The `app` probe: fail while the running system (`nixos-system-<host>-<gen>`, the
store hash dropped) is listed in the host's `unhealthy` file. With `slow_probes` it
first waits until the current-system link is that many seconds old (its result stays
`unknown` meanwhile)."""
PROBE_TIMEOUT_SECS = 60
"""Above any `slow_probes` delay a scenario asks for."""
NIXOS_REBUILD_NG = """#!/bin/sh
# nixos-rebuild-ng (NixOS 26.05) as the agents meet it: `--system` is gone (seed 000).
for arg in "$@"; do
  case "$arg" in
    --system|--system=*)
      echo "usage: nixos-rebuild [-h] [--store-path STORE_PATH] ... {switch,boot,test,build}" >&2
      echo "nixos-rebuild: error: unrecognized arguments: --system" >&2
      exit 2 ;;
  esac
done
echo "nixos-rebuild: not available on the local fleet's hosts" >&2
exit 1
"""
"""The `nixos-rebuild` on every agent's PATH (a shim of nixos-rebuild-ng's argv check)."""


def parse_curl_reply(out: bytes) -> Reply:
    """`curl -D -` output: the last header block (after any 100 Continue), then the
    body. No header block: no HTTP answer (status 0)."""
    status, headers = 0, {}
    while out.startswith(b"HTTP/"):
        head, sep, rest = out.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(
            (k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in lines[1:])
        )
        out = rest
    return Reply(status, out, headers)


def available() -> str | None:
    """Why the local backend cannot run here (None: it can)."""
    missing = [t for t in ("nix-build", "sqlite3", "curl", "jq") if shutil.which(t) is None]
    if missing:
        return f"the local backend needs {', '.join(missing)} on PATH"
    if not namespaces_available():
        return "the local backend needs root mount namespaces (unshare --mount)"
    return None


def set_flag(argv: list[str], flag: str, value: str) -> None:
    """`flag value` in `argv`: the value replaced where the flag is, else appended."""
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]


class LocalCp:
    def __init__(self, fleet: LocalFleetBackend) -> None:
        self.fleet = fleet
        self.bake: Callable[[bytes], bytes] | None = None
        self.trust = "flag"
        """How the next run trusts the forge's CA (`Fleet.forge_trust`)."""

    @property
    def running(self) -> bool:
        cp = self.fleet.local.cp
        return cp is not None and cp.proc.poll() is None

    def stop(self) -> None:
        self.fleet.record(CP_STOP)
        self.fleet.local.stop_cp()

    def start(self) -> None:
        """The `cp-start` event is the new run's `control plane listening` line; a run
        that exits first raises CpExited with its status and output."""
        env = self.fleet.local.env
        runs, began = len(env.processes), time.monotonic()
        try:
            self.fleet.local.start_cp(
                bake=self.bake,
                upstream_ca=self.trust == "flag",
                env=self.fleet.os_trust_env(self.trust),
            )
        except RuntimeError:
            cp = env.processes[-1] if len(env.processes) > runs else None
            status = None if cp is None else cp.proc.poll()
            if cp is None or status is None:
                raise
            raise CpExited(status, cp.log(), time.monotonic() - began) from None

    def crash(self) -> None:
        self.fleet.record(CP_CRASH)
        self.fleet.local.stop_cp(signal.SIGKILL)

    def corrupt_baked(self, on: bool = True) -> None:
        self.bake = flip_closure_digit if on else None

    def wipe(self) -> None:
        if self.running:
            raise RuntimeError("stop the control plane before wiping its DB (seed 001 step 1)")
        self.fleet.operator(WIPE)
        self.fleet.record(CP_WIPE)

    def reconfigure(self, *, confirm_window: float, switch_timeout: float) -> None:
        """Restart the CP with the two flags; refused, it keeps its previous ones (and
        stays down). Accepted, the agents restart with the new switch timeout."""
        args = self.fleet.local.env.extra_args
        before = list(args)
        window = round(confirm_window)
        set_flag(args, "--confirm-deadline-secs", str(window))
        set_flag(args, "--agent-switch-timeout-secs", f"{switch_timeout:g}")
        if self.running:
            self.stop()
        try:
            self.start()
        except CpExited:
            args[:] = before
            raise
        self.fleet.redeployed(window, switch_timeout)

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        db = self.fleet.local.db_path
        try:
            conn = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=10)
        except sqlite3.OperationalError as exc:
            raise NotAvailable(f"the CP has no database at {db} (wiped, not restarted)") from exc
        try:
            return [tuple(row) for row in conn.execute(query).fetchall()]
        finally:
            conn.close()


class LocalFleetBackend:
    backend = "local"

    def __init__(
        self, shape: Shape, workdir: Path, mutant: str | None, *, signer: Signer | None = None
    ) -> None:
        """`signer`: where CI's release key lives (default: the seeded software key;
        the `tpm` backend passes its TPM)."""
        self.shape = shape
        self._signer = signer
        self.workdir = workdir
        self.mutant = mutant
        self.t0 = time.time()
        names = self.stable_hosts(shape)
        self._waves = wave_plan(names, shape.waves)
        soak = int(shape.soak_minutes * POLL_SECS / 60)  # polls at 60 s → minutes here
        self.channels = {CHANNEL: ChannelDecl(waves=self._waves, soak_minutes=soak)}
        self.channel_of = dict.fromkeys(names, CHANNEL)
        self._add_channels(shape, soak)
        self.cp = LocalCp(self)
        self.hub = ProxyHub()
        self.proxies: dict[str, Proxy] = {}
        self._generation = 0
        self._switch_secs: dict[str, float] = {}
        self._healing = threading.Lock()
        self._revoked: dict[str, tuple[datetime, str]] = {}
        """Hosts in the revocations sidecar: (notBefore, reason)."""
        self._window = max(MIN_CONFIRM_WINDOW_SECS, round(shape.confirm_window_polls * POLL_SECS))
        try:
            self.local = LocalFleet.create(
                workdir / "fleet",
                list(self.channel_of),
                poll_interval=POLL_SECS,
                confirm_deadline_secs=self._window,
                channels=self.channel_of,
                channel_decls=self.channels,
                start=False,
                release_key=shape.release_key,
                signer=signer,
                signed_at=(
                    datetime.now(UTC) - timedelta(seconds=shape.installed_signed_ago)
                    if shape.installed_signed_ago
                    else None
                ),
            )
        except BaseException:
            self.hub.close()
            raise
        # The installed release happened to be signed low-s; every later one high-s
        # (with a TPM: the first high-s signature the TPM draws, `ReleaseKit.high_s`).
        self.local.env.kit.high_s = shape.release_key == ECDSA_P256
        self.log = LogHistory(
            self.t0,
            cp_logs=lambda: [p.log_path for p in self.local.env.processes],
            agent_logs=lambda: [
                (h.name, a.log_path) for h in self.local.hosts.values() for a in h.agents
            ],
            release_of=self._release_of,
        )
        self.shell = OperatorShell(self.local.env, workdir / "operator")
        self.record(RELEASE, release=0, **self._rollouts_of(0))
        try:
            self._start(mutant)
        except BaseException:
            self.close()
            raise

    def stable_hosts(self, shape: Shape) -> list[str]:
        """The `stable` channel's hosts (a backend with an inventory names its own)."""
        return host_names(shape.local_hosts)

    def _add_channels(self, shape: Shape, soak: int) -> None:
        """`shape.channels` (hosts `<name>-<i>`), then the channel edges."""
        for ch in shape.channels:
            names = [f"{ch.name}-{i}" for i in range(1, ch.local_hosts + 1)]
            self.channel_of.update(dict.fromkeys(names, ch.name))
            self.channels[ch.name] = planned_channel(names, ch.waves, soak_minutes=soak)
        for gates, gated in shape.channel_edges:
            decl = self.channels[gated]
            self.channels[gated] = replace(decl, gated_by=(*decl.gated_by, gates))

    def _start(self, mutant: str | None) -> None:
        """Proxies and probes, then the CP and every agent (through the launcher when
        there is a mutant); returns once each agent has enrolled and checked in (with a
        mutant: has tried to)."""
        self.local.launcher = self.local.env.launcher = launcher(mutant)
        self.shell.use_launcher(launcher(mutant))
        self.local.agent_path = [self._shims()]
        failure = HEALTH_FAILURE_SECS
        if self.shape.health_failure_polls is not None:
            failure = max(failure, round(self.shape.health_failure_polls * POLL_SECS))
        self.local.env.extra_args += ["--health-failure-secs", str(failure)]
        if self.shape.revocations_sidecar:
            self._publish_revocations()
            forge = self.local.env.forge
            assert forge is not None, "the local fleet always has a forge"
            self.local.env.extra_args += [
                "--revocations-artifact-url",
                forge.url("revocations.json"),
            ]
        if self.shape.nonce_allowlist:
            self.publish_nonces(())  # CI lists the fleet's own tokens before the CP starts
            forge = self.local.env.forge
            assert forge is not None, "the local fleet always has a forge"
            self.local.env.extra_args += [
                "--bootstrap-nonces-artifact-url",
                forge.url(NONCES_FILE),
            ]
        for name, h in self.local.hosts.items():
            proxy = self.hub.add(self.local.env.port)
            self.proxies[name] = proxy
            self.local.cp_urls[name] = f"https://127.0.0.1:{proxy.port}"
            probe = PROBE.format(
                link=h.root.current_system, marks=self._marks(name), slow=self._slow(name)
            )
            app = {
                "name": "app",
                "command": ["sh", "-c", probe],
                "intervalSeconds": 5,
                "timeoutSeconds": PROBE_TIMEOUT_SECS,
            }
            checks = {"mode": self.shape.probe_mode, "exec": [app]}
            (h.dir / "health-checks.json").write_text(json.dumps(checks))
        self.local.start_cp()
        for name in self.local.hosts:
            self.start_agent(name)
        if mutant is None:
            self.local.wait_enrolled()
            return
        # A mutant may break checkins on purpose (the checkers judge that): wait only
        # for each agent's first attempt.
        for h in self.local.hosts.values():
            wait_until(
                lambda h=h: any(s in h.agent.log() for s in FIRST_CHECKIN) or not h.agent.running(),
                ENROLL_TIMEOUT_SECS,
                f"{h.name}'s first checkin",
            )

    def close(self) -> None:
        try:
            self.local.close()
        finally:
            self.hub.close()

    # --- the record -------------------------------------------------------------------

    def record(
        self, kind: str, host: str | None = None, *, at: float | None = None, **detail: Any
    ) -> None:
        self.log.record(self.now() if at is None else at, kind, host, **detail)

    @property
    def history(self) -> History:
        return self.log.history()

    def _release_of(self, signed_at: str) -> int | None:
        at = parse_instant(signed_at)
        return next((int(g) for g, r in self.local.releases.items() if r.signed_at == at), None)

    def _rollout(self, generation: int) -> str | None:
        return self.local.release_of(generation).rollout_ids.get(CHANNEL)

    def _rollouts_of(self, generation: int) -> dict[str, Any]:
        """A `release` event's rollout ids: `stable`'s, and every channel's when the
        shape declares more."""
        detail: dict[str, Any] = {"rollout": self._rollout(generation)}
        if self.shape.channels:
            detail["rollouts"] = dict(self.local.release_of(generation).rollout_ids)
        return detail

    def _shims(self) -> Path:
        """The dir of the agents' `nixos-rebuild` shim (see NIXOS_REBUILD_NG)."""
        shims = self.workdir / "shims"
        shims.mkdir(parents=True, exist_ok=True)
        shim = shims / "nixos-rebuild"
        shim.write_text(NIXOS_REBUILD_NG)
        shim.chmod(0o755)
        return shims

    def _slow(self, host: str) -> Path:
        return self.local.host(host).dir / "probe-delay"

    def _marks(self, host: str) -> Path:
        return self.local.host(host).dir / "unhealthy"

    # --- shape and time -----------------------------------------------------------------

    @property
    def hosts(self) -> Sequence[str]:
        return list(self.local.hosts)

    @property
    def waves(self) -> Sequence[Sequence[str]]:
        return self._waves

    def hosts_of(self, channel: str) -> Sequence[str]:
        return sorted(h for h, c in self.channel_of.items() if c == channel)

    @property
    def poll_secs(self) -> float:
        return POLL_SECS

    def polls(self, n: float) -> float:
        return n * POLL_SECS

    @property
    def confirm_window(self) -> float:
        return float(self._window)

    @property
    def switch_timeout(self) -> float:
        return self.local.switch_timeout_secs

    def redeployed(self, window: int, switch_timeout: float) -> None:
        """After the CP took a new window and switch budget: the agents restart with
        that `--switch-timeout-secs` (each stopped by its PID), then check in."""
        self._window = window
        if switch_timeout == self.local.switch_timeout_secs:
            return
        self.local.switch_timeout_secs = switch_timeout
        for name in self.hosts:
            self.local.kill_agent(name, signal.SIGTERM)
            self.start_agent(name)
        self.local.wait_checkins_all(1)

    def now(self) -> float:
        return time.time() - self.t0

    # --- CI and the hosts -----------------------------------------------------------------

    def release(
        self,
        *,
        failing: Iterable[str] = (),
        unhealthy: Iterable[str] = (),
        keep: Iterable[str] = (),
    ) -> int:
        failing, unhealthy = set(failing), set(unhealthy)
        previous = self.local.release_of(self._generation).closures
        kept = {name: previous[name] for name in set(keep) & set(previous)}
        self._generation += 1
        n = self._generation
        built = [name for name in self.hosts if name not in kept]
        closures = self.local.build(
            n, failing=failing, switch_delay_secs=dict(self._switch_secs), hosts=built
        )
        closures.update(kept)
        for name in self.hosts:
            # Names the declared closure (`nixos-system-<host>-<gen>`), kept ones too.
            bad = closures[name].basename.split("-", 1)[1]
            self._marks(name).write_text(f"{bad}\n" if name in unhealthy else "")
        at = self.now()
        self.local._publish(
            str(n), closures, signed_at=None, on_health_failure=self.shape.policy,
            channels=self.channels,
        )  # fmt: skip
        self.record(RELEASE, at=at, release=n, **self._rollouts_of(n))
        return n

    def publish(
        self,
        *,
        signed_at: float = 0.0,
        freshness_window_minutes: int | None = None,
        tamper: str | None = None,
    ) -> int:
        if tamper is not None:
            check_mode("tamper", tamper, TAMPER_MODES)
        self._generation += 1
        n = self._generation
        closures = self.local.build(n, switch_delay_secs=dict(self._switch_secs))
        for name in self.hosts:
            self._marks(name).write_text("")
        channels = self.channels
        if freshness_window_minutes is not None:
            channels = {
                name: replace(decl, freshness_window_minutes=freshness_window_minutes)
                for name, decl in self.channels.items()
            }
        at = self.now()
        self.local._publish(
            str(n), closures, signed_at=datetime.now(UTC) + timedelta(seconds=signed_at),
            on_health_failure=self.shape.policy, channels=channels, tamper=tamper,
        )  # fmt: skip
        if tamper == "manifest-swap":
            self._swap_manifest(n)
        self.record(RELEASE, at=at, release=n, **self._rollouts_of(n))
        return n

    def _swap_manifest(self, n: int) -> None:
        """Serve the installed release's signed manifest under release `n`'s rollout id
        (before any agent is dispatched `n`: the CP must first poll the forge)."""
        rollouts = self.local.env.rollouts_dir
        new, old = self._rollout(n), self._rollout(0)
        for suffix in (".json", ".json.sig"):
            data = (rollouts / f"{old}{suffix}").read_bytes()
            tmp = rollouts / f".{new}{suffix}.tmp"
            tmp.write_bytes(data)
            tmp.replace(rollouts / f"{new}{suffix}")

    def partition(self, hosts: Iterable[str], duration: float) -> None:
        cut = sorted(set(hosts))
        left = [len(cut)]

        def healed() -> None:
            with self._healing:
                left[0] -= 1
                if left[0] == 0:
                    self.record(FAULT, fault="partition", phase="heal", hosts=len(cut))

        self.record(FAULT, fault="partition", phase="invoke", hosts=len(cut))
        for name in cut:
            self.proxies[name].cut_for(duration, healed)

    def revoke(self, hosts: Iterable[str], *, reason: str = "compromised") -> None:
        if not self.shape.revocations_sidecar:
            raise NotAvailable("revoke needs Shape(revocations_sidecar=True)")
        at = datetime.now(UTC)
        for name in sorted(set(hosts)):
            self._revoked[name] = (at, reason)
            self.record(REVOKE, name, reason=reason, source="sidecar")
        self._publish_revocations()

    def _publish_revocations(self) -> None:
        """CI's signed sidecar: every host revoked so far."""
        self.local.env.publish_revocations(
            {name: at for name, (at, _) in self._revoked.items()},
            reasons={name: why for name, (_, why) in self._revoked.items()},
        )

    def skew_clock(self, host: str, secs: float) -> None:
        raise NotAvailable("the local agents run on this machine's clock (use --backend sim)")

    def switch_by_hand(self, host: str) -> str:
        raise NotAvailable("a hand-deployed workstation build is simulated only (use sim)")

    def slow_probes(self, hosts: Iterable[str], secs: float) -> None:
        """The probe waits until the current-system link is `secs` old (whole seconds,
        rounded up; above 60 s the agent would time it out)."""
        if secs > PROBE_TIMEOUT_SECS:
            raise ValueError(f"slow_probes: {secs} s is above the probe timeout")
        for name in hosts:
            self._slow(name).write_text(f"{math.ceil(secs)}\n")

    def slow_activation(self, hosts: Iterable[str], secs: float) -> None:
        """Built into the next releases' closures: the switch sleeps `secs`, lock held,
        before it moves the current-system link."""
        self._switch_secs.update(dict.fromkeys(hosts, secs))

    def kill_agent(self, host: str) -> None:
        self.record(AGENT_KILL, host)
        self.local.kill_agent(host)

    def start_agent(self, host: str) -> None:
        self.local.start_agent(host)
        self.record(AGENT_START, host, closure=self.current(host))

    # --- observing ------------------------------------------------------------------------

    def current(self, host: str) -> str | None:
        current = self.local.host(host).current_basename()
        return None if current is None else str(current)

    def target(self, host: str) -> str | None:
        return self.local.release_of(self._generation).basename(host)

    def generations(self, host: str) -> int:
        return len(self.local.host(host).generations())

    def dispatch_record(self, host: str) -> Mapping[str, str] | None:
        d = self.local.host(host).last_dispatched()
        if d is None:
            return None
        return {
            "closure": str(d.get("closureHash")),
            "rollout": str(d.get("rolloutId")),
            "dispatched_at": str(d.get("dispatchedAt")),
        }

    def diagnose_host(self, host: str) -> HostDiagnosis:
        """Read off the host's files and its agent's process (no unit, no ssh here)."""
        return HostDiagnosis(
            agent="active" if self.agent_up(host) else "inactive",
            log_tail=tuple(self.local.host(host).agent_log().splitlines()[-LOG_TAIL:]),
            current=self.current(host),
            source=host,
        )

    def converged(self, hosts: Iterable[str] | None = None) -> bool:
        names = self.hosts if hosts is None else hosts
        return all(self.current(h) == self.target(h) for h in names)

    def agent_up(self, host: str) -> bool:
        h = self.local.host(host)
        return bool(h.agents) and h.agent.running()

    def call(
        self,
        method: str,
        path: str,
        *,
        as_: str | None,
        body: object = None,
        cert: str | None = None,
    ) -> Reply:
        """curl with the fleet CA and the caller's certificate, straight to the CP's
        port (not through a host's proxy). A host's certificate is the one its agent
        holds (enrolled or renewed; so a revocation since then refuses it, as on `sim`),
        or, before it has one (or outside the fleet), a fresh one from the fleet CA for
        that host; `cert` a PEM given with the host's key."""
        env = self.local.env
        client = self._client_cert(as_, cert)
        caller = None if as_ in (None, OPERATOR) else as_
        extra = ["-X", method, "-D", "-"]
        if body is not None:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            extra += ["-H", "content-type: application/json", "--data-binary", "@-"]
        else:
            raw = b""
        argv = env.curl(path, *extra, cert=client)
        res = subprocess.run(argv, input=raw, capture_output=True, timeout=30)
        reply = parse_curl_reply(res.stdout)
        self.record(CALL, caller, method=method, path=path, as_=as_, status=reply.status)
        return reply

    def _client_cert(self, as_: str | None, pem: str | None) -> CertPaths | AgentCert | None:
        if pem is not None:
            return self._given_cert(as_, pem)
        if as_ is None:
            return None
        return self.local.env.operator() if as_ == OPERATOR else self._cert(as_)

    def _given_cert(self, host: str | None, pem: str) -> CertPaths:
        """`pem` with `host`'s key, in a file curl can read."""
        if host is None or host == OPERATOR:
            raise ValueError("a given certificate needs the host whose key it certifies")
        key = self.local.env.pki.host_key(host).tls_key
        path = self.workdir / "call-certs" / f"{host}-{secrets.token_hex(4)}.pem"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(pem)
        return CertPaths(cert=path, key=key, cn=agent_cn(host, CN_SUFFIX))

    def _cert(self, host: str) -> CertPaths | AgentCert:
        if host not in self.local.hosts:  # outside the fleet: a fresh cert for the name
            return self.local.env.agent(host)
        h = self.local.host(host)
        if h.client_cert.exists():
            return CertPaths(cert=h.client_cert, key=h.key.tls_key, cn=agent_cn(host, CN_SUFFIX))
        return self.local.env.agent(host)

    def forge_fault(self, mode: str) -> None:
        forge = self.local.env.forge
        assert forge is not None, "the local fleet always has a forge"
        if mode == "unauthorized":
            forge.set_token("forge-token-the-cp-does-not-have")
        else:
            forge.set_token(None)
            forge.set_mode(
                {"ok": ForgeMode.OK, "down": ForgeMode.FAIL, "hang": ForgeMode.HANG}[mode]
            )
        self.record(FAULT, fault="forge", phase="heal" if mode == "ok" else mode)

    def forge_trust(self, how: str) -> None:
        check_mode("forge trust", how, FORGE_TRUST)
        self.cp.trust = how
        self.record(FAULT, fault="forge-trust", phase=how)

    def os_trust_env(self, how: str) -> dict[str, str] | None:
        """The CP's environment for `how`: with "os-store" and "none", `SSL_CERT_FILE`
        names the CP host's OS trust store, this machine's public roots with the
        forge's CA added or not (what the system default context loads)."""
        if how == "flag":
            return None
        forge = self.local.env.forge
        assert forge is not None, "the local fleet always has a forge"
        paths = ssl.get_default_verify_paths()
        system = Path(paths.cafile or paths.openssl_cafile)
        roots = system.read_bytes() if system.is_file() else b""
        if how == "os-store":
            roots += b"\n" + forge.ca_cert.read_bytes()
        store = self.workdir / "os-trust" / how / "ca-certificates.crt"
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_bytes(roots)
        return {"SSL_CERT_FILE": str(store), "SSL_CERT_DIR": str(store.parent)}

    def cache_fault(self, mode: str) -> None:
        check_mode("cache mode", mode, CACHE_MODES)
        # 503 on every request: Nix gives up on the substituter, the realise fails.
        if mode == "ok":
            self.local.cache.heal()
        else:
            self.local.cache.outage()
        self.record(FAULT, fault="cache", phase="heal" if mode == "ok" else mode)

    def operator(self, cmd: str) -> str:
        return self.shell.run(cmd)

    def release_signer(self) -> Signer:
        if self._signer is None or not self._signer.raw_s:
            raise NotAvailable(f"CI signs with a software key on {self.backend} (use tpm)")
        return self._signer

    # --- enrollment -------------------------------------------------------------------------

    def mint_token(self, host: str, *, key_of: str | None = None, org_key: int = 0) -> Any:
        token = mint_token(
            hostname=host,
            expected_pubkey_fingerprint=self.local.env.pki.host_key(key_of or host).fingerprint,
            org_root_key=self._org_key(org_key),
            now=datetime.now(UTC),
            nonce_bytes=secrets.token_bytes(NONCE_BYTES),
        )
        return dump_token(token)

    def csr(self, host: str, *, key_of: str | None = None) -> str:
        key = self.local.env.pki.host_key(key_of or host)
        return build_csr(key.private_key.read_bytes(), host)

    def publish_nonces(self, entries: Iterable[Mapping[str, str]] | None) -> None:
        if not self.shape.nonce_allowlist:
            raise NotAvailable("publish_nonces needs Shape(nonce_allowlist=True)")
        if entries is None:
            self.local.env.publish_nonces(None)
            self.record(NONCES, entries=-1)
            return
        own = [
            nonce_allowlist_entry(parse_token(json.loads(h.token_file.read_text())))
            for h in self.local.hosts.values()
        ]
        listed = own + [dict(e) for e in entries]
        self.local.env.publish_nonces(listed)
        self.record(NONCES, entries=len(listed))

    def set_org_root(self, current: int, previous: int | None) -> None:
        trust = json.loads(self.local.env.trust_path.read_text())
        slot: dict[str, Any] = {"current": public_key_json(self._org_key(current))}
        if previous is not None:
            slot["previous"] = public_key_json(self._org_key(previous))
        trust["orgRootKey"] = slot
        self.local.env.trust_path.write_text(json.dumps(trust))
        self.record(ORG_ROOT, current=current, previous=previous)

    def deploy_token(self, host: str, token: Any) -> None:
        self.local.host(host).token_file.write_text(json.dumps(token))

    def expire_cert(self, host: str) -> None:
        if self.agent_up(host):
            raise RuntimeError(f"stop {host}'s agent before expiring its certificate")
        issued = self.local.env.pki.issue_agent(
            host, validity_secs=EXPIRED_CERT_VALIDITY_SECS, now=datetime.now(UTC) - EXPIRED_AGO
        )
        self.local.host(host).client_cert.write_text(issued.cert.read_text())

    def _org_key(self, generation: int) -> Ed25519PrivateKey:
        """Org root key `generation`: 0 is the fleet's; later ones as a rotation mints."""
        if generation == 0:
            return self.local.env.kit.org_root_key
        key = seeded_key("ed25519", f"org-root:{generation}")
        assert isinstance(key, Ed25519PrivateKey)
        return key

    # --- waiting ----------------------------------------------------------------------------

    def sleep(self, secs: float) -> None:
        time.sleep(max(secs, 0.0))

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        wait_loop(
            predicate,
            timeout,
            what,
            now=self.now,
            advance=self.sleep,
            interval=WAIT_STEP_SECS,
            seen=self._seen,
        )

    def _seen(self) -> str:
        """Each host's generation against its target, and why it may be out of reach."""
        parts = []
        for name in self.hosts:
            current = self.current(name) or "-"
            state = current.rsplit("-", 1)[-1] + "/" + str(self._generation)
            if not self.agent_up(name):
                state += " agent down"
            if self.proxies[name].cut:
                state += " cut off"
            parts.append(f"{name}={state}")
        return (
            "hosts (generation/target) "
            + ", ".join(parts)
            + ("" if self.cp.running else "; the CP is down")
        )

    # --- the end --------------------------------------------------------------------------------

    def final(self) -> Final:
        hosts = {
            name: HostFinal(
                current=self.current(name),
                target=self.target(name),
                reachable=self.agent_up(name) and not self.proxies[name].cut,
            )
            for name in self.hosts
        }
        return Final(hosts=hosts, rollouts=self._rollouts(), waves=self._waves)

    def _rollouts(self) -> list[RolloutFinal]:
        try:
            rows = self.cp.sql(
                "SELECT rollout_id, state, current_wave, terminal_at FROM rollouts "
                "ORDER BY created_at, rowid"
            )
            parts = self.cp.sql("SELECT rollout_id, hostname, host_state FROM host_rollout_state")
        except NotAvailable:
            return []
        states: dict[str, dict[str, str]] = {}
        for rid, host, state in parts:
            states.setdefault(rid, {})[host] = state
        order = {
            rid: int(g) for g, r in self.local.releases.items() for rid in r.rollout_ids.values()
        }
        out = [
            RolloutFinal(
                rollout_id=rid,
                state=state,
                current_wave=wave,
                terminal=terminal is not None,
                host_states=states.get(rid, {}),
            )
            for rid, state, wave, terminal in rows
        ]
        return sorted(out, key=lambda r: order.get(r.rollout_id, -1))


@contextlib.contextmanager
def open_fleet(shape: Shape, workdir: Path, mutant: str | None) -> Iterator[LocalFleetBackend]:
    why = available()
    if why is not None:
        raise BackendUnavailable(why)
    fleet = LocalFleetBackend(shape, workdir, mutant)
    try:
        yield fleet
    finally:
        fleet.close()


__all__ = ["POLL_SECS", "WIPE", "LocalCp", "LocalFleetBackend", "available", "open_fleet"]
