"""A real local fleet: one control-plane process and N agent processes on 127.0.0.1.

Every agent is a host of its own: a private Nix store, profile and current-system
link in a mount namespace (`harness.nshost.HostRoot` + `run_in_host`), its own state
dir, SSH host key (`Pki.host_key`) and bootstrap token, so it *enrols* through
`/v1/enroll` rather than being handed a certificate. Closures are real
`nixos-system-<host>-<gen>` derivations built by real `nix-build`
(`harness.nixfixture`), pushed signed to a real HTTP binary cache
(`harness.binarycache`); releases are signed fleets plus CI-signed rollout
manifests on the CP's forge (`harness.cpenv.CpEnv`).

    fleet = LocalFleet.create(tmp / "fleet", hosts=5)   # installed gen 0, enrolled
    r1 = fleet.release(1)                               # build, push, sign, publish
    fleet.wait_converged(1)
    fleet.host("h1").current_basename()                 # == r1.closures["h1"].basename
    fleet.release(2, failing={"h3"})                    # h3's switch exits 4
    fleet.stop_cp(); fleet.wipe_cp_db(); fleet.start_cp()
    fleet.kill_agent("h2"); fleet.start_agent("h2")
    fleet.close()                                       # every process, by its PID

At creation each host is provisioned with generation `0` of its system (realised
from the cache, profile generation 1, current and booted links), the fleet
declaring exactly those closures is published (release `0`, converged, so agents
enrol at once), the CP starts, and the agents start and enrol.

Timings are short so that the magic-rollback paths run in seconds: agents poll every
`poll_interval` (2 s), the CP ticks, sweeps and polls its forge every 1–2 s, and the
confirm window is `--confirm-deadline-secs` (`confirm_deadline_secs`, 30 s, the
shortest the CP accepts) and the agents' switch timeout 10 s less (what the CP's
`--agent-switch-timeout-secs` check accepts).
Nothing leaves 127.0.0.1; every process is stopped by its own PID.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import signal
import subprocess
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from fleet_sim.fleetgen import ChannelDecl, HostDecl, Signer
from harness.binarycache import BinaryCache
from harness.cpenv import CpEnv, CpProcess, sqlite3, wait_until
from harness.launch import launcher
from harness.nixfixture import NixBuilder
from harness.nshost import Activation, Generation, HostRoot, build_host_system, run_in_host
from harness.pki import HostKey
from nixfleet.core.agent import MIN_CONFIRM_WINDOW_SECS
from nixfleet.core.closure import ClosureHash, StorePath
from nixfleet.core.token import dump_token, mint_token
from nixfleet.cp.config import CONFIRM_MARGIN_SECS

ROOT = Path(__file__).resolve().parent.parent
"""The project checkout (put on the agents' PYTHONPATH)."""

DEFAULT_POLL_INTERVAL_SECS = 2.0
DEFAULT_CONFIRM_DEADLINE_SECS = MIN_CONFIRM_WINDOW_SECS
INSTALLED_GENERATION = 0
"""The generation every host runs when the fleet is created."""


def host_names(n: int) -> list[str]:
    return [f"h{i}" for i in range(1, n + 1)]


def stop_pid(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0
) -> int:
    """Signal one process by its PID, wait, then SIGKILL it if it is still there."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# --- agents --------------------------------------------------------------------------


@dataclass
class AgentProcess:
    """One run of `nixfleet-agent` inside its host's mount namespace."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def count(self, needle: str) -> int:
        return self.log().count(needle)

    def wait_log(self, needle: str, *, count: int = 1, timeout: float = 30.0) -> None:
        """Wait for `count` lines containing `needle`; fail at once if the agent exits."""
        wait_until(
            lambda: self.count(needle) >= count or not self.running(),
            timeout,
            f"agent log {needle!r} ×{count} in {self.log_path}",
        )
        if self.count(needle) < count:
            raise AssertionError(
                f"agent exited {self.proc.returncode} before {needle!r}:\n{self.log()[-4000:]}"
            )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return stop_pid(self.proc, sig)


@dataclass
class FleetHost:
    """One simulated host: its Nix world, its identity and its agent runs."""

    name: str
    channel: str
    root: HostRoot
    key: HostKey
    token_file: Path
    client_cert: Path
    agents: list[AgentProcess] = field(default_factory=list)
    killed: bool = False
    """The test stopped the agent on purpose (it is not expected to be running)."""

    # --- the host's state, read from outside ------------------------------------------

    @property
    def dir(self) -> Path:
        return self.root.dir

    @property
    def state_dir(self) -> Path:
        return self.root.state_dir

    def current_basename(self) -> ClosureHash | None:
        """Full store basename the current-system link points at."""
        return self.root.current_system_basename()

    def generations(self) -> list[Generation]:
        """Profile generations, oldest first (from the `system-N-link` symlinks)."""
        return self.root.generations()

    def generation_basenames(self) -> list[str]:
        return [g.basename for g in self.generations()]

    def current_generation(self) -> int | None:
        return self.root.current_generation()

    def profile_target(self) -> ClosureHash | None:
        return self.root.profile_target()

    def activations(
        self, basename: str | None = None, *, action: str = "switch", event: str = "begin"
    ) -> list[Activation]:
        """Lines of the closures' own activation log (written by switch-to-configuration)."""
        return [
            a
            for a in self.root.activations()
            if (basename is None or a.basename == basename)
            and a.action == action
            and a.event == event
        ]

    def state_file(self, name: str) -> Path:
        return self.state_dir / name

    def last_dispatched(self) -> dict[str, Any] | None:
        path = self.state_file("last_dispatched")
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data

    def switch_running(self) -> bool:
        """Whether a switch-to-configuration holds the host's switch lock right now."""
        try:
            fd = os.open(self.root.switch_lock, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            return exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    # --- the agent --------------------------------------------------------------------

    @property
    def agent(self) -> AgentProcess:
        """The latest agent run."""
        if not self.agents:
            raise RuntimeError(f"no agent started for {self.name}")
        return self.agents[-1]

    def agent_log(self) -> str:
        """Every agent run's log, in order (the host's journal)."""
        return "".join(a.log() for a in self.agents)

    def enrolled(self) -> bool:
        return self.client_cert.exists()


# --- releases --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Release:
    generation: str
    closures: dict[str, StorePath]
    """hostname → the store path declared for it."""
    rollout_ids: dict[str, str]
    """channel → rollout id of CI's manifest for this release."""
    channels_of: dict[str, str]
    raw: bytes
    sig: bytes
    signed_at: datetime

    def basename(self, host: str) -> str:
        return self.closures[host].basename

    def rollout_of(self, host: str) -> str:
        return self.rollout_ids[self.channels_of[host]]


# --- the fleet ----------------------------------------------------------------------------


@dataclass
class LocalFleet:
    dir: Path
    env: CpEnv
    builder: NixBuilder
    cache: BinaryCache
    hosts: dict[str, FleetHost]
    poll_interval: float
    confirm_deadline_secs: int
    switch_timeout_secs: float
    releases: dict[str, Release] = field(default_factory=dict)
    cp: CpProcess | None = None
    launcher: list[str] = field(default_factory=lambda: launcher(None))
    """The argv prefix that runs `nixfleet.agent.main` (`harness.launch` applies a mutant)."""
    cp_urls: dict[str, str] = field(default_factory=dict)
    """hostname → the CP URL its agent uses, when not the CP's own (e.g. via a proxy)."""
    agent_path: list[Path] = field(default_factory=list)
    """Directories put before the agents' PATH (e.g. a `nixos-rebuild` shim)."""

    @classmethod
    def create(
        cls,
        dir: Path,
        hosts: int | Sequence[str] = 5,
        *,
        channels: Mapping[str, str] | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL_SECS,
        confirm_deadline_secs: int = DEFAULT_CONFIRM_DEADLINE_SECS,
        switch_timeout_secs: float | None = None,
        signed_at: datetime | None = None,
        channel_decls: Mapping[str, ChannelDecl] | None = None,
        start: bool = True,
        enroll_timeout: float = 60.0,
        release_key: str = "ed25519",
        signer: Signer | None = None,
    ) -> LocalFleet:
        """Build, provision and (with `start`) run the fleet; agents have enrolled and
        checked in once when this returns.

        `hosts`: a count (h1…hN) or names; `channels`: hostname → channel (default
        `stable`); `signed_at`: of the installed release 0 (default now; a release must
        be signed later than the one before it, so a test publishing a deliberately
        old release creates the fleet with an older one); `channel_decls` apply to
        release 0 too. `switch_timeout_secs`: the agents' (the CP is told it with
        `--agent-switch-timeout-secs`); default: the window less CONFIRM_MARGIN_SECS.
        `signer`: where CI's release key lives (`CpEnv.create`).
        """
        dir.mkdir(parents=True, exist_ok=True)
        names = host_names(hosts) if isinstance(hosts, int) else list(hosts)
        chan = {n: (channels or {}).get(n, "stable") for n in names}
        builder = NixBuilder.create(dir / "builder")
        cache = BinaryCache.create(dir / "cache", builder).start()
        env: CpEnv | None = None
        fleet: LocalFleet | None = None
        try:
            env = CpEnv.create(
                dir / "cp",
                {n: HostDecl(channel=chan[n]) for n in names},
                release_key=release_key,
                signer=signer,
            )
            if switch_timeout_secs is None:
                switch_timeout_secs = float(confirm_deadline_secs - CONFIRM_MARGIN_SECS)
            env.extra_args += [
                "--confirm-deadline-secs", str(confirm_deadline_secs),
                "--agent-switch-timeout-secs", f"{switch_timeout_secs:g}",
            ]  # fmt: skip
            # The fleet's trust roots also name the binary cache's key (trust.json
            # `cacheKeys`); agents take their trusted-public-keys from there.
            env.trust_path.write_text(json.dumps(env.kit.trust(cache_keys=[cache.public_key])))
            fleet_hosts = {}
            for n in names:
                root = HostRoot.create(dir / "hosts" / n, n, cache)
                token_file = root.dir / "bootstrap-token.json"
                fleet_hosts[n] = FleetHost(
                    name=n,
                    channel=chan[n],
                    root=root,
                    key=env.pki.host_key(n),
                    token_file=token_file,
                    client_cert=root.dir / "agent-cert.pem",
                )
            fleet = cls(
                dir=dir,
                env=env,
                builder=builder,
                cache=cache,
                hosts=fleet_hosts,
                poll_interval=poll_interval,
                confirm_deadline_secs=confirm_deadline_secs,
                switch_timeout_secs=switch_timeout_secs,
            )
            installed = fleet.build(INSTALLED_GENERATION)
            for n, path in installed.items():
                fleet.hosts[n].root.provision(path)
                fleet.mint_token(n)
            fleet._publish(
                str(INSTALLED_GENERATION),
                installed,
                signed_at=signed_at,
                channels=channel_decls,
            )
            if start:
                fleet.start_cp()
                for n in names:
                    fleet.start_agent(n)
                fleet.wait_enrolled(timeout=enroll_timeout)
        except BaseException:
            if fleet is not None:
                fleet.close()
            else:
                cache.stop()
                if env is not None:
                    env.close()
            raise
        return fleet

    # --- accessors ---------------------------------------------------------------------

    def host(self, name: str) -> FleetHost:
        return self.hosts[name]

    @property
    def names(self) -> list[str]:
        return list(self.hosts)

    @property
    def db_path(self) -> Path:
        return self.env.db_path

    def release_of(self, generation: str | int) -> Release:
        return self.releases[str(generation)]

    def cp_log(self) -> str:
        """Every CP run's log, in order (the CP's journal)."""
        return "".join(p.log() for p in self.env.processes)

    def cp_lines(self, needle: str, host: str | None = None) -> list[str]:
        """CP log lines containing `needle` (and ending with ` <host>`/`host=<host>`)."""
        out = []
        for ln in self.cp_log().splitlines():
            if needle not in ln:
                continue
            if host is not None and not (
                ln.endswith(f" {host}") or ln.endswith(f"host={host}") or f"host={host} " in ln
            ):
                continue
            out.append(ln)
        return out

    def checkins(self, host: str) -> int:
        """`checkin received … from <host>` lines across every CP run."""
        return len(self.cp_lines("checkin received", host))

    def sql(self, query: str) -> list[list[str]]:
        """`sqlite3 state.db "<query>"`, split into rows and `|`-separated columns."""
        out = sqlite3(self.db_path, query)
        return [ln.split("|") for ln in out.splitlines() if ln]

    # --- building and releasing ---------------------------------------------------------

    def build(
        self,
        generation: str | int,
        *,
        failing: Collection[str] = (),
        unknown_key: Collection[str] = (),
        switch_delay_secs: float | Mapping[str, float] = 0,
        hosts: Iterable[str] | None = None,
    ) -> dict[str, StorePath]:
        """Build `nixos-system-<host>-<generation>` for each host and push it signed.

        Hosts in `failing` get a switch that exits 4; those in `unknown_key` a closure
        signed only by a key no host trusts; `switch_delay_secs` (one value or per
        host) makes the switch sleep, lock held, before it moves the link."""
        out: dict[str, StorePath] = {}
        for name in hosts if hosts is not None else self.hosts:
            h = self.hosts[name]
            delay = (
                switch_delay_secs.get(name, 0)
                if isinstance(switch_delay_secs, Mapping)
                else switch_delay_secs
            )
            rogue = name in unknown_key
            path = build_host_system(
                self.builder,
                h.root,
                generation,
                fail=name in failing,
                switch_delay_secs=delay,
                variant="unknown-key" if rogue else "",
            )
            if rogue:
                self.cache.push_unknown(path)
            else:
                self.cache.push(path)
            out[name] = path
        return out

    def release(
        self,
        generation: str | int,
        *,
        failing: Collection[str] = (),
        unknown_key: Collection[str] = (),
        switch_delay_secs: float | Mapping[str, float] = 0,
        on_health_failure: str = "rollback-and-halt",
        signed_at: datetime | None = None,
        channels: Mapping[str, ChannelDecl] | None = None,
    ) -> Release:
        """Build and push every host's closure of `generation`, then sign and publish the
        fleet declaring them with CI's rollout manifests (the CP picks it up at its next
        forge poll, ≤ 2 s)."""
        closures = self.build(
            generation,
            failing=failing,
            unknown_key=unknown_key,
            switch_delay_secs=switch_delay_secs,
        )
        return self._publish(
            str(generation),
            closures,
            signed_at=signed_at,
            on_health_failure=on_health_failure,
            channels=channels,
        )

    def _publish(
        self,
        generation: str,
        closures: Mapping[str, StorePath],
        *,
        signed_at: datetime | None,
        on_health_failure: str = "rollback-and-halt",
        channels: Mapping[str, ChannelDecl] | None = None,
        tamper: str | None = None,
    ) -> Release:
        decls = {
            n: HostDecl(
                channel=self.hosts[n].channel,
                closure=closures[n].basename,
                pubkey=self.hosts[n].key.public_line,
            )
            for n in closures
        }
        at = signed_at or datetime.now(UTC)
        kw: dict[str, Any] = {"on_health_failure": on_health_failure}
        if channels is not None:
            kw["channels"] = channels
        raw, sig = self.env.publish(decls, signed_at=at, tamper=tamper, **kw)
        rids = {ch: rid for ch, (rid, _b, _s) in self.env.kit.sign_manifests(raw).items()}
        release = Release(
            generation=generation,
            closures=dict(closures),
            rollout_ids=rids,
            channels_of={n: self.hosts[n].channel for n in closures},
            raw=raw,
            sig=sig,
            signed_at=at,
        )
        self.releases[generation] = release
        return release

    # --- waiting ---------------------------------------------------------------------------

    def wait_enrolled(self, names: Iterable[str] | None = None, timeout: float = 60.0) -> None:
        """Each agent has a certificate and one successful checkin."""
        for n in names if names is not None else self.hosts:
            h = self.hosts[n]
            h.agent.wait_log("checkin ok", timeout=timeout)

    def converged(self, generation: str | int, names: Iterable[str] | None = None) -> bool:
        release = self.release_of(generation)
        for n in names if names is not None else release.closures:
            h = self.hosts[n]
            if h.current_basename() != release.basename(n):
                return False
            if h.last_dispatched() is not None:  # still confirming
                return False
        return True

    def wait_converged(
        self, generation: str | int, timeout: float = 60.0, names: Iterable[str] | None = None
    ) -> None:
        """Every host (or `names`) runs the release's closure and has had its confirm
        answered (no dispatch record left in its state dir)."""
        chosen = list(names) if names is not None else None

        def done() -> bool:
            self._check_agents_alive()
            return self.converged(generation, chosen)

        try:
            wait_until(done, timeout, f"fleet converged on release {generation}", interval=0.2)
        except TimeoutError as exc:
            release = self.release_of(generation)
            state = {
                n: (h.current_basename(), release.closures.get(n), h.last_dispatched())
                for n, h in self.hosts.items()
            }
            raise TimeoutError(f"{exc}\nhosts: {state}") from None

    def wait_checkins(self, host: str, more: int, timeout: float | None = None) -> None:
        """Wait until the CP has logged `more` further checkins from `host`."""
        seen = self.checkins(host)
        limit = timeout if timeout is not None else self.poll_interval * (more + 3) + 10
        wait_until(
            lambda: self.checkins(host) >= seen + more,
            limit,
            f"{more} more checkins from {host}",
            interval=0.2,
        )

    def wait_checkins_all(self, more: int, timeout: float | None = None) -> None:
        """Wait until the CP has logged `more` further checkins from every host."""
        seen = {n: self.checkins(n) for n in self.hosts}
        limit = timeout if timeout is not None else self.poll_interval * (more + 3) + 10

        def done() -> bool:
            self._check_agents_alive()
            return all(self.checkins(n) >= seen[n] + more for n in self.hosts)

        wait_until(done, limit, f"{more} more checkins from every host", interval=0.2)

    def wait_report(self, host: str, event: str, timeout: float = 30.0) -> list[str]:
        """Wait for a `host_reports` row of `event` from `host`; the host's event kinds."""

        def found() -> list[str] | None:
            kinds = self.report_kinds(host)
            return kinds if event in kinds else None

        kinds: list[str] = wait_until(found, timeout, f"{event} report from {host}", interval=0.2)
        return kinds

    def report_kinds(self, host: str) -> list[str]:
        if not self.db_path.exists():
            return []
        rows = self.sql(
            f"SELECT event_kind FROM host_reports WHERE hostname = '{host}' ORDER BY id;"
        )
        return [r[0] for r in rows]

    def _check_agents_alive(self) -> None:
        for h in self.hosts.values():
            if h.agents and not h.agent.running() and not h.killed:
                raise AssertionError(
                    f"agent {h.name} exited {h.agent.proc.returncode}:\n{h.agent.log()[-4000:]}"
                )

    # --- processes ----------------------------------------------------------------------------

    def mint_token(self, name: str) -> Path:
        """A fresh bootstrap token for `name` (org root key, bound to its SSH host key)."""
        h = self.hosts[name]
        token = mint_token(
            hostname=name,
            expected_pubkey_fingerprint=h.key.fingerprint,
            org_root_key=self.env.kit.org_root_key,
            now=datetime.now(UTC),
            nonce_bytes=secrets.token_bytes(16),
        )
        h.token_file.write_text(json.dumps(dump_token(token)))
        return h.token_file

    def agent_argv(self, name: str, extra: Sequence[str] = ()) -> list[str]:
        h = self.hosts[name]
        return [
            "--control-plane-url", self.cp_urls.get(name, self.env.url("")),
            "--machine-id", name,
            "--poll-interval", f"{self.poll_interval:g}",
            "--trust-file", str(self.env.trust_path),
            "--ca-cert", str(self.env.pki.ca.cert),
            "--client-cert", str(h.client_cert),
            "--bootstrap-token-file", str(h.token_file),
            "--state-dir", str(h.state_dir),
            "--ssh-host-key-file", str(h.key.private_key),
            "--health-checks-config", str(h.dir / "health-checks.json"),
            "--system-profile", str(h.root.profile),
            "--current-system-link", str(h.root.current_system),
            "--booted-system-link", str(h.root.booted_system),
            "--switch-lock", str(h.root.switch_lock),
            "--nix-substituter", self.cache.url,
            "--switch-timeout-secs", f"{self.switch_timeout_secs:g}",
            *extra,
        ]  # fmt: skip

    def start_agent(self, name: str, extra: Sequence[str] = ()) -> AgentProcess:
        """Run `nixfleet-agent` for `name` in its host's mount namespace (PID = the
        agent's own); its output goes to `<host>/agent-<n>.log`."""
        h = self.hosts[name]
        if h.agents and h.agent.running():
            raise RuntimeError(f"agent {name} is already running (pid {h.agent.pid})")
        env = h.root.environ()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env.pop("NIXFLEET_AGENT_CP_URL", None)
        if self.agent_path:
            env["PATH"] = os.pathsep.join([*map(str, self.agent_path), env["PATH"]])
        log_path = h.dir / f"agent-{len(h.agents)}.log"
        with log_path.open("ab") as log:
            proc = run_in_host(
                [*self.launcher, "nixfleet.agent.main", *self.agent_argv(name, extra)],
                h.root,
                env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=h.dir,
            )
        agent = AgentProcess(proc=proc, log_path=log_path)
        h.agents.append(agent)
        h.killed = False
        return agent

    def kill_agent(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Signal the host's agent by its PID and wait for it; its exit status."""
        h = self.hosts[name]
        h.killed = True
        return h.agent.stop(sig)

    def start_cp(
        self,
        *,
        timeout: float = 30.0,
        bake: Callable[[bytes], bytes] | None = None,
        upstream_ca: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> CpProcess:
        """Start the CP with the build-time artifact CI baked into its closure: the
        release before the newest one (seed 000: the release commit lands after the
        closure is built). `bake` rewrites the artifact's bytes (e.g. a flipped byte);
        `upstream_ca=False` leaves `--upstream-ca` off; `env` adds to its environment."""
        if self.cp is not None and self.cp.proc.poll() is None:
            raise RuntimeError(f"the control plane is already running (pid {self.cp.proc.pid})")
        published = list(self.releases.values())
        baked = published[-2] if len(published) >= 2 else None
        build_time = (
            self.env.write_build_time(bake(baked.raw) if bake else baked.raw, baked.sig)
            if baked
            else None
        )
        args = self.env.args(build_time=build_time, upstream_ca=upstream_ca)
        self.cp = self.env.start(args, timeout=timeout, env=env)
        return self.cp

    def stop_cp(self, sig: int = signal.SIGTERM) -> int | None:
        if self.cp is None:
            return None
        rc = self.cp.stop(sig)
        return rc

    def wipe_cp_db(self) -> None:
        """Seed 001 step 2: remove state.db, -wal and -shm (the CP must be stopped)."""
        if self.cp is not None and self.cp.proc.poll() is None:
            raise RuntimeError("stop the control plane before wiping its DB")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)

    def close(self, *, switch_timeout: float = 30.0) -> None:
        """Stop every agent, wait for switches they left running, stop the CP, the
        forge and the cache: each process by its own PID."""
        for h in self.hosts.values():
            for a in h.agents:
                a.stop()
        for h in self.hosts.values():
            # A SIGKILLed agent leaves its detached switch running; it ends on its own.
            with contextlib.suppress(TimeoutError):
                wait_until(lambda h=h: not h.switch_running(), switch_timeout, "switch done")
        self.env.close()
        self.cache.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- checks shared by the tests -----------------------------------------------------------

    def tracebacks(self) -> list[str]:
        """Processes whose log shows a Python traceback (agents and CP runs)."""
        bad = [h.name for h in self.hosts.values() if "Traceback" in h.agent_log()]
        if "Traceback" in self.cp_log():
            bad.append("control-plane")
        return bad


__all__ = [
    "DEFAULT_CONFIRM_DEADLINE_SECS",
    "DEFAULT_POLL_INTERVAL_SECS",
    "INSTALLED_GENERATION",
    "AgentProcess",
    "FleetHost",
    "LocalFleet",
    "Release",
    "host_names",
    "stop_pid",
]
