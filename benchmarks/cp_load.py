"""Load benchmark of the real control-plane process: N simulated agents checking in.

The control plane runs as a real process (`python -m nixfleet.cp.main serve`, started
by `harness.cpenv.CpEnv`) on 127.0.0.1, with the production timer periods (reconcile
tick 30 s, rollback sweep 30 s, upstream poll 60 s), a signed fleet of N hosts served
by an HTTPS forge, and an on-disk SQLite state DB. Each simulated agent is an asyncio
task with its own aiohttp session holding one keep-alive TLS connection made with
its OWN client certificate (CN `agent-<host>.fleet.test`, issued by the CP's issuance
code through `harness.pki`), and posts `/v1/agent/checkin` bodies built by
`nixfleet.core.wire`.

Modes:

- `paced`: every agent checks in every `--poll` seconds (default 60) on a fixed
  schedule with a random start offset in [0, poll), for `--duration` seconds
  (default 2 × poll). The offered load is N / poll checkins/s. Round 1 includes each
  agent's TLS handshake; later rounds run on warm keep-alive connections (the steady
  state the issue's p99 target is about). Both are reported.
- `full`: first every agent opens its connection (`GET /healthz`, reported as
  `tls-connect`), then `--concurrency` workers drive checkins back to back, round
  robin over all N agents, for `--full-duration` seconds. Latency here includes
  queueing inside the CP (about concurrency / throughput).

`--start converged` (default): before the CP starts, its state DB gets the rows the
CP itself writes at each host's first converged checkin (written with the CP's own
`Store`): an established fleet after a CP restart. `--start cold`: an empty DB, so
round 1 is every host's first contact (a converged-at-dispatch write each).

`--report declared` (default): agents run their declared closure (the converged
steady state). `--report old`: agents run an older closure, so the first checkin of
each host dispatches a target and later ones are in flight (no target).

Each (N, mode) phase gets a freshly started CP on the same state DB for that N, so
an overloaded phase cannot leak its backlog into the next. Requests time out after
`--timeout` seconds; every loop is bounded in count and time; every process started
here (CP, cert-issuing workers) is stopped by PID on exit, Ctrl-C included. All
traffic goes to 127.0.0.1.

Other work on this 2-CPU box skews every figure: before each phase the benchmark
waits (`--wait-quiet`, default 60 s) for the CPUs to go idle, and the `others` column
says how many CPUs other processes used during the phase. Per phase it also prints
the machine's CPU split, the load generator's own event-loop lag (its GC is off while
measuring), and gaps in the CP log (a silent log under load = a stalled CP loop).
`--cp-diag` additionally loads a sitecustomize into the CP that logs event-loop
callbacks > 100 ms and GC passes > 20 ms as `DIAG` lines in the CP log (`--keep` or
`--workdir` keeps the logs); `--cp-gc-off` is an experiment that disables the CP's GC.

    python benchmarks/cp_load.py                      # the issue's figures (~10 min)
    python benchmarks/cp_load.py --quick              # 100-host smoke run (< 30 s)
    python benchmarks/cp_load.py --hosts 1000 10000 --mode paced full --poll 60 \\
        --duration 120 --full-duration 20 --concurrency 32

`benchmarks/cp_profile.py` breaks one checkin down in process.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import multiprocessing
import os
import platform
import random
import resource
import shutil
import signal
import sqlite3
import ssl
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from fleet_sim.fleetgen import HostDecl, fake_closure  # noqa: E402
from harness.cpenv import CpEnv, CpProcess, free_port  # noqa: E402
from harness.pki import Pki, client_ssl_context  # noqa: E402
from nixfleet.core import wire  # noqa: E402
from nixfleet.core.snapshot import SOURCE_UPSTREAM, snapshot_from_verified  # noqa: E402
from nixfleet.core.trust import parse_trust  # noqa: E402
from nixfleet.core.verify import verify_artifact  # noqa: E402
from nixfleet.cp.store import Store  # noqa: E402

CHECKIN_PATH = "/v1/agent/checkin"
HEALTHZ_PATH = "/healthz"
HEADERS = {"Content-Type": "application/json", "X-Nixfleet-Protocol": "1"}
# The flags CpEnv.args() sets to test values; removed so the CP runs with its defaults.
TEST_TIMER_FLAGS = ("--tick-interval-secs", "--sweep-interval-secs", "--poll-interval-secs")
DECLARED_GEN = 2
OLD_GEN = 1
FD_HEADROOM = 256


def host_name(i: int) -> str:
    return f"h{i:05d}"


# --- machine facts ----------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB (empty once it is gone)."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    except (OSError, ValueError):
        pass
    return out


def proc_cpu_secs(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def self_cpu_secs() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def source_digest() -> str:
    """sha256 prefix of the nixfleet sources: which CP code a phase measured."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "nixfleet").rglob("*")):
        if path.suffix in (".py", ".sql"):
            h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def raise_fd_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


# --- agent certificates -------------------------------------------------------------

_WORKER_PKI: Pki | None = None


def _init_worker(pki: Pki) -> None:
    global _WORKER_PKI
    _WORKER_PKI = pki
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C


def _issue(names: Sequence[str]) -> list[tuple[str, str, str, str]]:
    assert _WORKER_PKI is not None
    out = []
    for name in names:
        a = _WORKER_PKI.issue_agent(name)
        out.append((name, str(a.cert), str(a.key), a.host_key.public_line))
    return out


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    name: str
    cert: Path
    key: Path
    pubkey: str


def issue_agents(pki: Pki, names: Sequence[str], workers: int) -> list[AgentIdentity]:
    """A host key and an `agent-<name>` cert per host, issued by `Pki.issue_agent`
    (the CP's own issuance code) in `workers` processes."""
    chunks = [list(names[i : i + 200]) for i in range(0, len(names), 200)]
    ctx = multiprocessing.get_context("spawn")
    out: list[AgentIdentity] = []
    with ctx.Pool(workers, initializer=_init_worker, initargs=(pki,)) as pool:
        for batch in pool.imap(_issue, chunks):
            out.extend(AgentIdentity(n, Path(c), Path(k), p) for n, c, k, p in batch)
    return out


# --- optional diagnostics inside the CP process ------------------------------------------

CP_DIAG_SITECUSTOMIZE = """\
# Written by benchmarks/cp_load.py --cp-diag; imported by the CP process at start-up
# (PYTHONPATH). Logs event-loop callbacks slower than 100 ms and GC passes over 20 ms
# to stderr (the CP log), in the CP log's timestamp format. No behaviour changes.
import asyncio.events
import gc
import os
import sys
import time
from datetime import UTC, datetime


def _stamp():
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _describe(handle):
    cb = handle._callback
    owner = getattr(cb, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return "task " + getattr(coro, "__qualname__", repr(coro))
    return getattr(cb, "__qualname__", repr(cb))


_orig_run = asyncio.events.Handle._run


def _run(self):
    t = time.perf_counter()
    try:
        return _orig_run(self)
    finally:
        dt = time.perf_counter() - t
        if dt > 0.1:
            sys.stderr.write(
                f"{_stamp()} DIAG slow-callback {dt * 1e3:.0f} ms {_describe(self)}\\n"
            )


asyncio.events.Handle._run = _run
_gc_start = [0.0]


def _gc(phase, info):
    if phase == "start":
        _gc_start[0] = time.perf_counter()
        return
    dt = time.perf_counter() - _gc_start[0]
    if dt > 0.02:
        sys.stderr.write(
            f"{_stamp()} DIAG gc gen{info['generation']} {dt * 1e3:.0f} ms "
            f"collected={info['collected']} tracked={len(gc.get_objects())}\\n"
        )


gc.callbacks.append(_gc)
if os.environ.get("CP_LOAD_DIAG_GC") == "off":
    gc.disable()  # experiment: how much of the tail is the CP's garbage collector
    sys.stderr.write(f"{_stamp()} DIAG gc disabled for this experiment\\n")
"""


def cp_diag_env(workdir: Path, gc_off: bool) -> dict[str, str]:
    """Environment that loads CP_DIAG_SITECUSTOMIZE into the CP process."""
    diag = workdir / "cp-diag"
    diag.mkdir(parents=True, exist_ok=True)
    (diag / "sitecustomize.py").write_text(CP_DIAG_SITECUSTOMIZE)
    path = os.environ.get("PYTHONPATH")
    env = {"PYTHONPATH": str(diag) + (os.pathsep + path if path else "")}
    if gc_off:
        env["CP_LOAD_DIAG_GC"] = "off"
    return env


# --- an established fleet -------------------------------------------------------------


def prime_converged(db_path: Path, raw: bytes, sig: bytes, trust: dict[str, Any]) -> int:
    """Give the state DB the rows the CP writes when each host first checks in on its
    declared closure (the tick's `ensure_rollout`, then `record_converged_at_dispatch`),
    through the CP's own `Store`: an established, converged fleet whose CP restarted.

    Durability is switched off for this bulk load only; the CP opens the DB itself."""
    now = datetime.now(UTC)
    verified = verify_artifact(
        raw, sig, parse_trust(trust).ci_release_key, now=now, window_secs=2_592_000,
        source="fleet.resolved.json",
    )
    snap = snapshot_from_verified(verified, source=SOURCE_UPSTREAM)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    store = Store.open(db_path)
    try:
        store.connection.execute("PRAGMA synchronous = OFF")
        for channel, rid in snap.rollout_ids.items():
            store.ensure_rollout(rid, channel, now=now)
        written = 0
        for name, host in snap.fleet.hosts.items():
            rid = snap.rollout_ids.get(host.channel)
            if rid is None or host.closure_hash is None:
                continue
            wave = snap.fleet.wave_index(name) or 0
            written += store.record_converged_at_dispatch(
                name, rid, wave, host.closure_hash, now=now
            )
    finally:
        store.close()
    return written


# --- simulated agents ------------------------------------------------------------------


@dataclass(slots=True)
class Agent:
    name: str
    ctx: ssl.SSLContext
    body: bytes
    session: aiohttp.ClientSession | None = None


def checkin_body(name: str, closure: str) -> bytes:
    req = wire.CheckinRequest(
        hostname=name,
        agent_version="cp-load",
        current_generation=wire.GenerationRef(
            closure_hash=wire.ClosureHash(closure),
            boot_id="6a1c5b1e-0000-4000-8000-000000000000",
        ),
        last_fetch_outcome=wire.FetchOutcome(result=wire.FETCH_NONE),
        uptime_secs=86_400,
    )
    return json.dumps(wire.dump_checkin_request(req), separators=(",", ":")).encode()


@dataclass(slots=True)
class Result:
    latency: float
    """Seconds from send to the full response body."""
    round: int
    error: str | None
    target: bool = False
    new_conn: bool = False
    """The request had to open a connection (TCP + TLS handshake): keep-alive missed."""


class _Ctx:
    __slots__ = ("new_conn",)

    def __init__(self) -> None:
        self.new_conn = False


async def _on_conn_created(session: object, trace_ctx: Any, params: object) -> None:
    trace_ctx.trace_request_ctx.new_conn = True


TRACE = aiohttp.TraceConfig()
TRACE.on_connection_create_end.append(_on_conn_created)


@dataclass(slots=True)
class PhaseStats:
    n: int
    mode: str
    seconds: float
    offered: float | None
    results: list[Result]
    cp_cpu: float
    gen_cpu: float
    others: float
    """CPUs' worth of machine time used by neither the CP nor the load generator."""
    rss_kb: int
    hwm_kb: int
    notes: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, base_url: str, timeout: float, keepalive: float) -> None:
        self.base_url = base_url
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.keepalive = keepalive

    def open(self, agent: Agent) -> None:
        connector = aiohttp.TCPConnector(
            ssl=agent.ctx, limit=1, keepalive_timeout=self.keepalive, enable_cleanup_closed=True
        )
        agent.session = aiohttp.ClientSession(
            base_url=self.base_url, connector=connector, timeout=self.timeout,
            trace_configs=[TRACE],
        )

    async def close(self, agents: Sequence[Agent]) -> None:
        for i in range(0, len(agents), 500):
            batch = [a.session.close() for a in agents[i : i + 500] if a.session is not None]
            await asyncio.gather(*batch, return_exceptions=True)
        for a in agents:
            a.session = None
        gc.unfreeze()

    async def request(self, agent: Agent, *, checkin: bool, round: int = 0) -> Result:
        if agent.session is None:
            self.open(agent)
        assert agent.session is not None
        ctx = _Ctx()
        t0 = time.perf_counter()
        error: str | None = None
        target = False
        try:
            if checkin:
                async with agent.session.post(
                    CHECKIN_PATH, data=agent.body, headers=HEADERS, trace_request_ctx=ctx
                ) as r:
                    payload = await r.read()
                    status = r.status
            else:
                async with agent.session.get(HEALTHZ_PATH, trace_request_ctx=ctx) as r:
                    payload = await r.read()
                    status = r.status
            if status != 200:
                error = f"HTTP {status}"
            elif checkin:
                target = json.loads(payload).get("target") is not None
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientError as exc:
            error = type(exc).__name__
        except (OSError, ValueError) as exc:
            error = type(exc).__name__
        return Result(time.perf_counter() - t0, round, error, target, ctx.new_conn)


async def run_paced(
    bench: Bench, agents: Sequence[Agent], poll: float, duration: float, seed: int
) -> tuple[list[Result], float, int]:
    """Each agent checks in at offset + k·poll (offset uniform in [0, poll)) while that
    is before `duration`. Returns the results, the elapsed time and late starts."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.5
    results: list[Result] = []
    late = 0

    async def agent_loop(agent: Agent, offset: float) -> None:
        nonlocal late
        k = 0
        while offset + k * poll < duration:
            delay = t0 + offset + k * poll - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                late += 1  # the previous checkin ran into this slot
            results.append(await bench.request(agent, checkin=True, round=k + 1))
            k += 1

    tasks = [asyncio.create_task(agent_loop(a, rng.uniform(0, poll))) for a in agents]
    hard_stop = duration + bench.timeout.total + 10 if bench.timeout.total else duration + 40
    _done, pending = await asyncio.wait(tasks, timeout=t0 - loop.time() + hard_stop)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return results, loop.time() - t0, late


async def run_connect(
    bench: Bench, agents: Sequence[Agent], concurrency: int, limit: float
) -> tuple[list[Result], float]:
    """Open every agent's connection (`GET /healthz`), `concurrency` at a time."""
    queue = deque(agents)
    results: list[Result] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def worker() -> None:
        while queue and loop.time() - t0 < limit:
            results.append(await bench.request(queue.popleft(), checkin=False))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, loop.time() - t0


async def run_full(
    bench: Bench, agents: Sequence[Agent], concurrency: int, duration: float
) -> tuple[list[Result], float]:
    """`concurrency` workers check in back to back, round robin over the agents; no
    request starts after `duration`. Elapsed runs until the last one finished."""
    queue = deque(agents)
    results: list[Result] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def worker() -> None:
        while queue and loop.time() - t0 < duration:
            agent = queue.popleft()
            results.append(await bench.request(agent, checkin=True))
            queue.append(agent)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(agents)))))
    return results, loop.time() - t0


# --- the control plane ------------------------------------------------------------------


def cp_args(env: CpEnv) -> list[str]:
    """CpEnv's flags minus the test timer periods: the CP runs with its defaults."""
    argv = env.args()
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in TEST_TIMER_FLAGS:
            skip = True
            continue
        out.append(a)
    # Every simulated agent connects from 127.0.0.1: lift the per-peer connection cap.
    return [*out, "--max-connections-per-peer", "0"]


def db_counts(db: Path) -> str:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            pc = conn.execute("SELECT COUNT(*) FROM pending_confirms").fetchone()[0]
            hr = conn.execute("SELECT COUNT(*) FROM host_rollout_state").fetchone()[0]
        return f"pending_confirms={pc} host_rollout_state={hr}"
    except sqlite3.Error as exc:
        return f"db unreadable ({exc})"


class Phase:
    """One CP process for one (N, mode) phase, with CPU and memory readings."""

    def __init__(
        self, env: CpEnv, n: int, mode: str, digest: str, cp_env: dict[str, str] | None
    ) -> None:
        self.env, self.n, self.mode, self.digest = env, n, mode, digest
        self.cp_env = cp_env
        self.cp: CpProcess | None = None

    def __enter__(self) -> Phase:
        self.env.port = free_port()
        now_digest = source_digest()
        if now_digest != self.digest:
            print(f"  WARNING: nixfleet sources changed during the run ({self.digest} → "
                  f"{now_digest}); this phase measures the new code", flush=True)
        t = time.monotonic()
        self.cp = self.env.start(cp_args(self.env), timeout=120, env=self.cp_env)
        print(f"  CP pid {self.cp.proc.pid} listening in {time.monotonic() - t:.1f} s, "
              f"code {now_digest}, log {self.cp.log_path.name} "
              f"(state.db: {db_counts(self.env.db_path)})", flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cp is not None:
            self.cp.stop(timeout=10)

    @property
    def pid(self) -> int:
        assert self.cp is not None
        return self.cp.proc.pid

    def check_alive(self) -> None:
        assert self.cp is not None
        if self.cp.proc.poll() is not None:
            tail = "\n".join(self.cp.log().splitlines()[-20:])
            raise RuntimeError(f"control plane exited {self.cp.proc.returncode}:\n{tail}")


def host_cpu_jiffies() -> list[int]:
    """The machine's `cpu` line of /proc/stat: user nice system idle iowait irq softirq
    steal."""
    try:
        with open("/proc/stat") as fh:
            return [int(x) for x in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return [0] * 8


def host_busy_cores(before: list[int], after: list[int]) -> float:
    """CPUs' worth of busy time between two /proc/stat readings (0 … nproc)."""
    d = [b - a for a, b in zip(before, after, strict=True)]
    user, nice, system, _idle, _iowait, irq, softirq, _steal = d
    return (user + nice + system + irq + softirq) / (sum(d) or 1) * (os.cpu_count() or 1)


async def wait_quiet(limit: float, threshold: float = 0.15, streak: int = 4) -> str:
    """Wait (at most `limit` s) until the machine has been idle for `streak` half-second
    samples in a row: other work on this box (test suites, other benchmarks) skews every
    figure."""
    start = time.monotonic()
    quiet = 0
    busy = 0.0
    while time.monotonic() - start < limit:
        before = host_cpu_jiffies()
        await asyncio.sleep(0.5)
        busy = host_busy_cores(before, host_cpu_jiffies())
        quiet = quiet + 1 if busy < threshold else 0
        if quiet >= streak:
            return f"machine quiet ({busy:.2f} CPUs busy) after {time.monotonic() - start:.0f} s"
    return (f"WARNING: machine still busy ({busy:.2f} CPUs used by other processes) after "
            f"{limit:.0f} s; this phase shares the CPUs (see the 'others' column)")


def host_cpu_note(before: list[int], after: list[int]) -> str:
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d) or 1
    user, nice, system, idle, iowait, irq, softirq, steal = d
    return (f"machine CPU: busy {(user + nice + system + irq + softirq) / total:.0%} "
            f"(user {(user + nice) / total:.0%}, sys {(system + irq + softirq) / total:.0%}), "
            f"iowait {iowait / total:.0%}, steal {steal / total:.0%}, idle {idle / total:.0%} "
            f"of {os.cpu_count()} CPUs")


class GcPauses:
    """Full (generation 2) collections in the load generator during a phase."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._t = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._t)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)

    def note(self) -> str:
        if not self.pauses:
            return "no full GC"
        return (f"{len(self.pauses)} full GCs, longest {max(self.pauses) * 1e3:.0f} ms, "
                f"{sum(self.pauses):.2f} s in all")


async def loop_lag(samples: list[float], interval: float = 0.05) -> None:
    """How late the load generator's own event loop wakes up (its health check)."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(interval)
        samples.append(loop.time() - t - interval)


def lag_note(samples: list[float]) -> str:
    if not samples:
        return "load-gen loop lag: no samples"
    s = sorted(samples)
    return (f"load-gen loop lag: p50 {pct(s, 0.5) * 1e3:.1f} ms, p99 {pct(s, 0.99) * 1e3:.1f} ms, "
            f"max {s[-1] * 1e3:.0f} ms")


def cp_silences(log: str, start: datetime, end: datetime, floor: float = 0.25) -> str:
    """Gaps of more than `floor` seconds between consecutive CP log lines within the
    phase, and the line that ended the longest ones: with agents checking in many
    times a second, a silent log means a stalled CP event loop."""
    prev: datetime | None = None
    gaps: list[tuple[float, str]] = []
    for line in log.splitlines():
        try:
            t = datetime.strptime(line[:24], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        except ValueError:
            continue
        if t < start or t > end:
            continue
        if prev is not None and (t - prev).total_seconds() > floor:
            gaps.append(((t - prev).total_seconds(), line[25:].split(" closure_hash")[0][:60]))
        prev = t
    if not gaps:
        return f"CP log silences > {floor * 1e3:.0f} ms: none"
    gaps.sort(reverse=True)
    top = "; ".join(f"{g:.2f} s before '{what}'" for g, what in gaps[:3])
    return (f"CP log silences > {floor * 1e3:.0f} ms: {len(gaps)}, "
            f"{sum(g for g, _ in gaps):.1f} s in all; longest: {top}")


async def measure(
    phase: Phase, coro: Any, offered: float | None, label: str
) -> tuple[PhaseStats, Any]:
    # A silent CP log means a stall only where checkins arrive much faster than that.
    floor = max(0.25, 10.0 / offered) if offered else 0.25
    cp0, gen0, host0 = proc_cpu_secs(phase.pid), self_cpu_secs(), host_cpu_jiffies()
    lags: list[float] = []
    lag_task = asyncio.create_task(loop_lag(lags))
    start = datetime.now(UTC)
    t = time.monotonic()
    # The load generator's own full collections (a million objects at 10,000 agents)
    # would stall every agent at once and show up as CP latency: none while measuring.
    gc.disable()
    with GcPauses() as gcp:
        try:
            out = await coro
        finally:
            lag_task.cancel()
            gc.enable()
    wall = time.monotonic() - t
    end = datetime.now(UTC)
    mem = proc_status(phase.pid)
    cp_cpu = (proc_cpu_secs(phase.pid) - cp0) / wall
    gen_cpu = (self_cpu_secs() - gen0) / wall
    host1 = host_cpu_jiffies()
    host = host_cpu_note(host0, host1)
    others = max(0.0, host_busy_cores(host0, host1) - cp_cpu - gen_cpu)
    phase.check_alive()
    assert phase.cp is not None
    results, elapsed = out[0], out[1]
    stats = PhaseStats(
        n=phase.n,
        mode=label,
        seconds=elapsed,
        offered=offered,
        results=results,
        cp_cpu=cp_cpu,
        gen_cpu=gen_cpu,
        others=others,
        rss_kb=mem.get("VmRSS", 0),
        hwm_kb=mem.get("VmHWM", 0),
        notes=[
            f"{host}; CP RSS {mem.get('VmRSS', 0) / 1024:.0f} MB "
            f"(peak {mem.get('VmHWM', 0) / 1024:.0f} MB)",
            f"{lag_note(lags)}; {gcp.note()}",
            cp_silences(phase.cp.log(), start, end, floor),
        ],
    )
    print(f"  [{label}]", flush=True)
    for note in stats.notes:
        print(f"    {note}", flush=True)
    return stats, out


# --- reporting ------------------------------------------------------------------------


def pct(sorted_vals: Sequence[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    idx = min(len(sorted_vals) - 1, max(0, round(q * len(sorted_vals) + 0.5) - 1))
    return sorted_vals[idx]


@dataclass(slots=True)
class Row:
    n: int
    mode: str
    seconds: float
    offered: float | None
    count: int
    ok: int
    rate: float
    p50: float
    p99: float
    max: float
    errors: int
    targets: int
    conns: int
    cp_cpu: float
    gen_cpu: float
    others: float
    rss_mb: float
    error_kinds: Counter[str]


def summarize(
    stats: PhaseStats, mode: str | None = None, results: Sequence[Result] | None = None,
    seconds: float | None = None,
) -> Row:
    rs = stats.results if results is None else results
    secs = stats.seconds if seconds is None else seconds
    ok = [r.latency * 1e3 for r in rs if r.error is None]
    ok.sort()
    kinds = Counter(r.error for r in rs if r.error is not None)
    return Row(
        n=stats.n,
        mode=mode or stats.mode,
        seconds=secs,
        offered=stats.offered,
        count=len(rs),
        ok=len(ok),
        rate=len(ok) / secs if secs > 0 else 0.0,
        p50=pct(ok, 0.50),
        p99=pct(ok, 0.99),
        max=ok[-1] if ok else float("nan"),
        errors=sum(kinds.values()),
        targets=sum(1 for r in rs if r.target),
        conns=sum(1 for r in rs if r.new_conn),
        cp_cpu=stats.cp_cpu,
        gen_cpu=stats.gen_cpu,
        others=stats.others,
        rss_mb=stats.rss_kb / 1024,
        error_kinds=kinds,
    )


HEADER = (
    f"{'N':>6}  {'mode':<22} {'secs':>6} {'offered/s':>9} {'requests':>8} {'ok/s':>7} "
    f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>6} {'targets':>7} {'conns':>6} "
    f"{'CP cpu':>6} {'gen cpu':>7} {'others':>6} {'CP RSS MB':>9}"
)


def fmt_ms(v: float) -> str:
    return "-" if v != v else (f"{v:.1f}" if v < 1000 else f"{v:.0f}")


def fmt_row(r: Row) -> str:
    offered = "-" if r.offered is None else f"{r.offered:.1f}"
    return (
        f"{r.n:>6}  {r.mode:<22} {r.seconds:>6.1f} {offered:>9} {r.count:>8} {r.rate:>7.1f} "
        f"{fmt_ms(r.p50):>8} {fmt_ms(r.p99):>8} {fmt_ms(r.max):>8} {r.errors:>6} "
        f"{r.targets:>7} {r.conns:>6} {r.cp_cpu:>6.0%} {r.gen_cpu:>7.0%} {r.others:>6.2f} "
        f"{r.rss_mb:>9.0f}"
    )


# --- the run ------------------------------------------------------------------------------


@dataclass(slots=True)
class Config:
    hosts: list[int]
    modes: list[str]
    poll: float
    duration: float
    full_duration: float
    concurrency: int
    connect_concurrency: int
    connect_limit: float
    timeout: float
    report: str
    start: str
    cp_diag: bool
    cp_gc_off: bool
    wait_quiet: float
    seed: int
    workers: int
    workdir: Path | None
    keep: bool


def settle(bench: Bench, agents: Sequence[Agent]) -> None:
    """Create every agent's (unconnected) session, then move the load generator's
    long-lived objects out of the GC's reach, so its own full collections do not stall
    the agents (they would show up as CP latency)."""
    for a in agents:
        if a.session is None:
            bench.open(a)
    gc.collect()
    gc.freeze()


async def paced_phase(
    phase: Phase, bench: Bench, agents: Sequence[Agent], cfg: Config
) -> list[Row]:
    n = len(agents)
    settle(bench, agents)
    print(f"  paced: every {cfg.poll:g} s for {cfg.duration:g} s "
          f"(offered {n / cfg.poll:.1f} checkins/s)", flush=True)
    stats, out = await measure(
        phase, run_paced(bench, agents, cfg.poll, cfg.duration, cfg.seed),
        n / cfg.poll, f"paced {cfg.poll:g}s",
    )
    if out[2]:
        print(f"  note: {out[2]} checkins started > 1 s after their slot", flush=True)
    first = [r for r in stats.results if r.round == 1]
    steady = [r for r in stats.results if r.round > 1]
    rows = [
        summarize(stats, f"paced {cfg.poll:g}s: all"),
        # Round k is scheduled in [(k-1)·poll, k·poll): each part's rate is over its window.
        summarize(stats, "  round 1 (+handshake)", first, min(cfg.poll, cfg.duration)),
    ]
    if steady:
        rows.append(
            summarize(stats, "  rounds 2+ (steady)", steady, cfg.duration - cfg.poll)
        )
    return rows


async def full_phase(
    phase: Phase, bench: Bench, agents: Sequence[Agent], cfg: Config
) -> list[Row]:
    settle(bench, agents)
    print(f"  connect: {len(agents)} TLS handshakes + GET /healthz, "
          f"{cfg.connect_concurrency} at a time", flush=True)
    connect, _ = await measure(
        phase,
        run_connect(bench, agents, cfg.connect_concurrency, cfg.connect_limit),
        None, "tls-connect (healthz)",
    )
    print(f"  full speed: {cfg.concurrency} in flight for {cfg.full_duration:g} s", flush=True)
    full, _ = await measure(
        phase, run_full(bench, agents, cfg.concurrency, cfg.full_duration),
        None, f"full c={cfg.concurrency}",
    )
    return [summarize(connect), summarize(full)]


async def run_size(
    env: CpEnv, ids: Sequence[AgentIdentity], n: int, cfg: Config, digest: str
) -> list[Row]:
    print(f"\n=== N = {n} hosts ===", flush=True)
    subset = ids[:n]
    env.hosts = {
        a.name: HostDecl(closure=fake_closure(a.name, DECLARED_GEN), pubkey=a.pubkey)
        for a in subset
    }
    env.db_path = env.dir / f"state-{n}" / "state.db"
    t = time.monotonic()
    raw, sig = env.publish()
    print(f"  fleet published: {len(raw) / 1e6:.2f} MB signed artifact, "
          f"{time.monotonic() - t:.1f} s", flush=True)
    if cfg.start == "converged":
        t = time.monotonic()
        written = prime_converged(env.db_path, raw, sig, env.kit.trust())
        print(f"  state.db primed: {written} hosts converged (CP's Store, "
              f"{time.monotonic() - t:.1f} s)", flush=True)
    else:
        print("  state.db empty: round 1 is every host's first contact", flush=True)
    gen = DECLARED_GEN if cfg.report == "declared" else OLD_GEN
    t = time.monotonic()
    agents = [
        Agent(
            name=a.name,
            ctx=client_ssl_context(env.pki.ca.cert, cert=a.cert, key=a.key),
            body=checkin_body(a.name, fake_closure(a.name, gen)),
        )
        for a in subset
    ]
    print(f"  {n} client TLS contexts (own cert each) in {time.monotonic() - t:.1f} s",
          flush=True)
    rows: list[Row] = []
    keepalive = max(cfg.poll * 2, 30.0)
    for mode in cfg.modes:
        phase_rows: list[Row] = []
        if cfg.wait_quiet > 0:
            print(f"  {await wait_quiet(cfg.wait_quiet)}", flush=True)
        cp_env = cp_diag_env(env.dir, cfg.cp_gc_off) if cfg.cp_diag or cfg.cp_gc_off else None
        with Phase(env, n, mode, digest, cp_env) as phase:
            bench = Bench(env.url(""), cfg.timeout, keepalive)
            try:
                if mode == "paced":
                    phase_rows = await paced_phase(phase, bench, agents, cfg)
                else:
                    phase_rows = await full_phase(phase, bench, agents, cfg)
                print(f"  state.db after: {db_counts(env.db_path)}", flush=True)
            finally:
                await bench.close(agents)
        for r in phase_rows:
            if r.error_kinds:
                print(f"  errors [{r.mode.strip()}]: {dict(r.error_kinds)}", flush=True)
        print(HEADER)
        for r in phase_rows:
            print(fmt_row(r), flush=True)
        rows.extend(phase_rows)
    return rows


def parse_args(argv: Sequence[str] | None) -> Config:
    p = argparse.ArgumentParser(
        description="Load benchmark of the real control-plane process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--hosts", type=int, nargs="+", default=[1000, 10000], help="fleet sizes N")
    p.add_argument("--mode", nargs="+", choices=("paced", "full"), default=["paced", "full"])
    p.add_argument("--poll", type=float, default=60.0, help="paced: seconds between checkins")
    p.add_argument("--duration", type=float, default=None,
                   help="paced: run length in seconds (default 2 × poll)")
    p.add_argument("--full-duration", type=float, default=20.0, help="full: run length, s")
    p.add_argument("--concurrency", type=int, default=32, help="full: checkins in flight")
    p.add_argument("--connect-concurrency", type=int, default=64,
                   help="full: handshakes in flight while opening connections")
    p.add_argument("--connect-limit", type=float, default=120.0,
                   help="full: stop opening connections after this many seconds")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, s")
    p.add_argument("--report", choices=("declared", "old"), default="declared",
                   help="closure the agents run: the declared one (converged) or an old one "
                   "(first checkin dispatches, then in flight)")
    p.add_argument("--start", choices=("converged", "cold"), default="converged",
                   help="state DB at CP start: every host already converged (an established "
                   "fleet; written with the CP's Store) or empty (round 1 = first contact)")
    p.add_argument("--cp-diag", action="store_true",
                   help="load a sitecustomize into the CP that logs event-loop callbacks "
                   "> 100 ms and GC passes > 20 ms (DIAG lines in the CP log)")
    p.add_argument("--cp-gc-off", action="store_true",
                   help="experiment (implies --cp-diag): disable the CP's garbage collector, "
                   "to size its share of the latency tail; not a measurement of the CP as is")
    p.add_argument("--wait-quiet", type=float, default=60.0,
                   help="before each phase, wait up to this many seconds for other processes "
                   "to leave the CPUs idle (0: don't wait)")
    p.add_argument("--seed", type=int, default=1, help="paced start offsets")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes issuing agent certs")
    p.add_argument("--workdir", type=Path, default=None, help="where to lay out PKI, DBs, logs")
    p.add_argument("--keep", action="store_true", help="keep the work dir (CP logs, DBs)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 100 hosts, poll 5 s for 10 s, full speed for 5 s")
    a = p.parse_args(argv)
    if a.quick:
        a.hosts, a.poll, a.duration, a.full_duration = [100], 5.0, 10.0, 5.0
        a.timeout, a.wait_quiet = min(a.timeout, 10.0), min(a.wait_quiet, 3.0)
    if a.duration is None:
        a.duration = 2 * a.poll
    if min(a.hosts) < 1 or a.poll <= 0 or a.duration <= 0 or a.full_duration <= 0:
        p.error("--hosts, --poll, --duration and --full-duration must be positive")
    if a.concurrency < 1 or a.connect_concurrency < 1 or a.timeout <= 0:
        p.error("--concurrency, --connect-concurrency and --timeout must be positive")
    return Config(
        hosts=sorted(set(a.hosts)), modes=list(dict.fromkeys(a.mode)), poll=a.poll,
        duration=a.duration, full_duration=a.full_duration, concurrency=a.concurrency,
        connect_concurrency=a.connect_concurrency, connect_limit=a.connect_limit,
        timeout=a.timeout, report=a.report, start=a.start, cp_diag=a.cp_diag or a.cp_gc_off,
        cp_gc_off=a.cp_gc_off,
        wait_quiet=a.wait_quiet,
        seed=a.seed, workers=max(1, a.workers),
        workdir=a.workdir, keep=a.keep,
    )


def verdicts(rows: Sequence[Row], cfg: Config) -> list[str]:
    out = []
    n_max = max(cfg.hosts)
    full = [r for r in rows if r.n == n_max and r.mode.startswith("full")]
    if full:
        ok = full[0].rate >= 500 and full[0].errors == 0
        out.append(f"≥ 500 checkins/s sustained (full speed, N={n_max}): "
                   f"{full[0].rate:.1f}/s, {full[0].errors} errors → {'PASS' if ok else 'FAIL'}")
    steady = [r for r in rows if r.n == n_max and "steady" in r.mode]
    first = [r for r in rows if r.n == n_max and r.mode.startswith("paced")]
    if steady or first:
        r = steady[0] if steady else first[0]
        ok = r.p99 < 50 and r.errors == 0 and r.ok > 0
        out.append(f"p99 < 50 ms at {n_max} hosts × {cfg.poll:g} s ({r.mode.strip()}): "
                   f"p99 {fmt_ms(r.p99)} ms, {r.errors} errors → {'PASS' if ok else 'FAIL'}")
    return out


async def main_async(cfg: Config, workdir: Path, digest: str) -> list[Row]:
    n_max = max(cfg.hosts)
    print(f"workdir {workdir}", flush=True)
    t = time.monotonic()
    env = CpEnv.create(workdir, {})
    try:
        print(f"  PKI + forge ready in {time.monotonic() - t:.1f} s", flush=True)
        t = time.monotonic()
        names = [host_name(i) for i in range(n_max)]
        ids = issue_agents(env.pki, names, cfg.workers)
        dt = time.monotonic() - t
        print(f"  {n_max} host keys + agent certs via Pki.issue_agent in {dt:.1f} s "
              f"({cfg.workers} processes, {dt / n_max * 1e3 * cfg.workers:.2f} ms each)",
              flush=True)
        rows: list[Row] = []
        for n in cfg.hosts:
            rows.extend(await run_size(env, ids, n, cfg, digest))
        return rows
    finally:
        env.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    n_max = max(cfg.hosts)
    limit = raise_fd_limit(n_max + FD_HEADROOM)
    if limit < n_max + FD_HEADROOM:
        print(f"open-file limit {limit} is too low for {n_max} agents", file=sys.stderr)
        return 2
    print(f"machine: nproc={os.cpu_count()} cpu={cpu_model()!r} python={platform.python_version()}"
          f" aiohttp={aiohttp.__version__} ssl={ssl.OPENSSL_VERSION}")
    print(f"config: hosts={cfg.hosts} modes={cfg.modes} poll={cfg.poll:g}s "
          f"paced-duration={cfg.duration:g}s full-duration={cfg.full_duration:g}s "
          f"concurrency={cfg.concurrency} timeout={cfg.timeout:g}s report={cfg.report}")
    digest = source_digest()
    print(f"code: nixfleet sources {digest}, start={cfg.start}"
          + (" [CP DIAGNOSTICS LOADED]" if cfg.cp_diag else "")
          + (" [EXPERIMENT: CP GC DISABLED]" if cfg.cp_gc_off else ""))
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: every process by PID
    workdir = cfg.workdir or Path(tempfile.mkdtemp(prefix="cp-load-"))
    started = time.monotonic()
    try:
        rows = asyncio.run(main_async(cfg, workdir, digest))
    except KeyboardInterrupt:
        print("\ninterrupted; processes stopped", file=sys.stderr)
        return 130
    finally:
        if cfg.keep or cfg.workdir is not None:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n=== summary ({time.monotonic() - started:.0f} s; nproc={os.cpu_count()}, "
          f"{cpu_model()}) ===")
    print(HEADER)
    for r in rows:
        print(fmt_row(r))
    print("ok/s: successful requests per second of the phase (checkins; handshakes for "
          "tls-connect); latency over successful requests; conns: requests that had to open "
          "a TLS connection (keep-alive missed); CP cpu / gen cpu: share of one CPU used by "
          "the CP / the load generator; others: CPUs used by other processes.")
    tag = "target (EXPERIMENT, CP GC disabled; not the CP as is): " if cfg.cp_gc_off else "target: "
    for line in verdicts(rows, cfg):
        print(tag + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
