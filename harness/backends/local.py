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
  lock held, before it moves the link (the agents' switch timeout is 30 s).
- With a mutant, the CP and every agent start through `python -m harness.launch`, so
  the bug is inside the real processes.
- The history is read from the CP's and agents' logs plus the backend's own actions
  (harness.backends.loghistory); `final()` reads the hosts' links and the CP's tables.
- `operator(cmd)` is a bash on the CP's host (harness.opshell documents its variables).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fleet_sim.fleetgen import ChannelDecl, wave_plan
from harness.cpenv import wait_until
from harness.fleet import (
    AGENT_KILL,
    AGENT_START,
    CALL,
    CP_CRASH,
    CP_STOP,
    CP_WIPE,
    FAULT,
    OPERATOR,
    RELEASE,
    Final,
    History,
    HostFinal,
    NotAvailable,
    Reply,
    RolloutFinal,
    Shape,
    wait_loop,
)
from harness.forge import ForgeMode
from harness.launch import launcher
from harness.localfleet import LocalFleet, host_names
from harness.nshost import namespaces_available
from harness.opshell import OperatorShell
from harness.runner import BackendUnavailable
from harness.tcpproxy import Proxy, ProxyHub
from nixfleet.core.agent import MIN_CONFIRM_WINDOW_SECS
from nixfleet.core.timeutil import parse_instant
from nixfleet.cp.config import MIN_HEALTH_FAILURE_SECS

from .loghistory import LogHistory

POLL_SECS = 2.0
WAIT_STEP_SECS = 0.2
CHANNEL = "stable"
FIRST_CHECKIN = ("checkin ok", "checkin failed")
ENROLL_TIMEOUT_SECS = 60.0
HEALTH_FAILURE_SECS = MIN_HEALTH_FAILURE_SECS
"""The CP's `--health-failure-secs`: 5 polls, the least it accepts."""
WIPE = "rm -rf state.db state.db-wal state.db-shm"
"""Seed 001 step 2, run in the CP's state dir."""
PROBE = (
    'b=$(basename "$(readlink {link})"); n=${{b#*-}}; '
    'if grep -qxF "$n" {marks} 2>/dev/null; then echo "closure $n is unhealthy" >&2; exit 1; fi'
)
"""The `app` probe: fail while the running system (`nixos-system-<host>-<gen>`, the
store hash dropped) is listed in the host's `unhealthy` file."""


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


class LocalCp:
    def __init__(self, fleet: LocalFleetBackend) -> None:
        self.fleet = fleet

    @property
    def running(self) -> bool:
        cp = self.fleet.local.cp
        return cp is not None and cp.proc.poll() is None

    def stop(self) -> None:
        self.fleet.record(CP_STOP)
        self.fleet.local.stop_cp()

    def start(self) -> None:
        """The `cp-start` event is the new run's `control plane listening` line."""
        self.fleet.local.start_cp()

    def crash(self) -> None:
        self.fleet.record(CP_CRASH)
        self.fleet.local.stop_cp(signal.SIGKILL)

    def wipe(self) -> None:
        if self.running:
            raise RuntimeError("stop the control plane before wiping its DB (seed 001 step 1)")
        self.fleet.operator(WIPE)
        self.fleet.record(CP_WIPE)

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

    def __init__(self, shape: Shape, workdir: Path, mutant: str | None) -> None:
        self.shape = shape
        self.workdir = workdir
        self.mutant = mutant
        self.t0 = time.time()
        names = host_names(shape.local_hosts)
        self._waves = wave_plan(names, shape.waves)
        soak = int(shape.soak_minutes * POLL_SECS / 60)  # polls at 60 s → minutes here
        self.channels = {CHANNEL: ChannelDecl(waves=self._waves, soak_minutes=soak)}
        self.cp = LocalCp(self)
        self.hub = ProxyHub()
        self.proxies: dict[str, Proxy] = {}
        self._generation = 0
        self._switch_secs: dict[str, float] = {}
        self._healing = threading.Lock()
        self._window = max(MIN_CONFIRM_WINDOW_SECS, round(shape.confirm_window_polls * POLL_SECS))
        try:
            self.local = LocalFleet.create(
                workdir / "fleet",
                names,
                poll_interval=POLL_SECS,
                confirm_deadline_secs=self._window,
                channel_decls=self.channels,
                start=False,
            )
        except BaseException:
            self.hub.close()
            raise
        self.log = LogHistory(
            self.t0,
            cp_logs=lambda: [p.log_path for p in self.local.env.processes],
            agent_logs=lambda: [
                (h.name, a.log_path) for h in self.local.hosts.values() for a in h.agents
            ],
            release_of=self._release_of,
        )
        self.shell = OperatorShell(self.local.env, workdir / "operator")
        self.record(RELEASE, release=0, rollout=self._rollout(0))
        try:
            self._start(mutant)
        except BaseException:
            self.close()
            raise

    def _start(self, mutant: str | None) -> None:
        """Proxies and probes, then the CP and every agent (through the launcher when
        there is a mutant); returns once each agent has enrolled and checked in (with a
        mutant: has tried to)."""
        self.local.launcher = self.local.env.launcher = launcher(mutant)
        self.local.env.extra_args += ["--health-failure-secs", str(HEALTH_FAILURE_SECS)]
        for name, h in self.local.hosts.items():
            proxy = self.hub.add(self.local.env.port)
            self.proxies[name] = proxy
            self.local.cp_urls[name] = f"https://127.0.0.1:{proxy.port}"
            probe = PROBE.format(link=h.root.current_system, marks=self._marks(name))
            checks = {
                "exec": [{"name": "app", "command": ["sh", "-c", probe], "intervalSeconds": 5}]
            }
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

    def _marks(self, host: str) -> Path:
        return self.local.host(host).dir / "unhealthy"

    # --- shape and time -----------------------------------------------------------------

    @property
    def hosts(self) -> Sequence[str]:
        return list(self.local.hosts)

    @property
    def waves(self) -> Sequence[Sequence[str]]:
        return self._waves

    @property
    def poll_secs(self) -> float:
        return POLL_SECS

    def polls(self, n: float) -> float:
        return n * POLL_SECS

    @property
    def confirm_window(self) -> float:
        return float(self._window)

    def now(self) -> float:
        return time.time() - self.t0

    # --- CI and the hosts -----------------------------------------------------------------

    def release(self, *, failing: Iterable[str] = (), unhealthy: Iterable[str] = ()) -> int:
        failing, unhealthy = set(failing), set(unhealthy)
        self._generation += 1
        n = self._generation
        for name in self.hosts:
            self._marks(name).write_text(f"nixos-system-{name}-{n}\n" if name in unhealthy else "")
        closures = self.local.build(n, failing=failing, switch_delay_secs=dict(self._switch_secs))
        at = self.now()
        self.local._publish(
            str(n), closures, signed_at=None, on_health_failure=self.shape.policy,
            channels=self.channels,
        )  # fmt: skip
        self.record(RELEASE, at=at, release=n, rollout=self._rollout(n))
        return n

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

    def skew_clock(self, host: str, secs: float) -> None:
        raise NotAvailable("the local agents run on this machine's clock (use --backend sim)")

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

    def converged(self, hosts: Iterable[str] | None = None) -> bool:
        names = self.hosts if hosts is None else hosts
        return all(self.current(h) == self.target(h) for h in names)

    def agent_up(self, host: str) -> bool:
        h = self.local.host(host)
        return bool(h.agents) and h.agent.running()

    def call(self, method: str, path: str, *, as_: str | None, body: object = None) -> Reply:
        """curl with the fleet CA and the caller's certificate, straight to the CP's
        port (not through a host's proxy). A host's certificate is a fresh one from the
        fleet CA for that host, as a renewal would give it."""
        env = self.local.env
        cert = None if as_ is None else env.operator() if as_ == OPERATOR else env.agent(as_)
        caller = None if as_ in (None, OPERATOR) else as_
        extra = ["-X", method, "-D", "-"]
        if body is not None:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            extra += ["-H", "content-type: application/json", "--data-binary", "@-"]
        else:
            raw = b""
        argv = env.curl(path, *extra, cert=cert)
        res = subprocess.run(argv, input=raw, capture_output=True, timeout=30)
        reply = parse_curl_reply(res.stdout)
        self.record(CALL, caller, method=method, path=path, as_=as_, status=reply.status)
        return reply

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

    def operator(self, cmd: str) -> str:
        return self.shell.run(cmd)

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
