"""Health probes from `--health-checks-config` (lifecycle §5.11).

    {"mode": "enforce" | "permissive" | "disabled",          (default enforce)
     "http": [{name, url, expectStatus=200, intervalSeconds=30, timeoutSeconds=5}],
     "tcp":  [{name, host="127.0.0.1", port, intervalSeconds=30, timeoutSeconds=5}],
     "exec": [{name, command: [argv…], intervalSeconds=30, timeoutSeconds=10}]}

A missing file means no probes; a file that does not parse is fatal at start-up.
Intervals are floored at 5 s; `disabled` runs no scheduler. Each probe starts
`unknown`, runs once at start and then every interval; after a switch or rollback
(`rerun`) it is `unknown` again and runs at once, so no result taken on the previous
system vouches for the new one. `lastPassAt` survives failures and `failureReason`
is cut to 512 characters. The checkin carries the
results by name and the mode; the CP derives "passing"/"observed" from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from nixfleet.core.canonical import load_json
from nixfleet.core.errors import BadInput, ParseError
from nixfleet.core.idents import escape_controls
from nixfleet.core.jsonfields import Reader
from nixfleet.core.wire import (
    HEALTH_CHECK_MODES,
    PROBE_FAIL,
    PROBE_PASS,
    PROBE_UNKNOWN,
    HealthProbe,
)

log = logging.getLogger("nixfleet.agent")

DEFAULT_MODE = "enforce"
MIN_INTERVAL_SECS = 5.0
MAX_REASON_CHARS = 512


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeSpec:
    name: str
    kind: str
    """`http`, `tcp` or `exec`."""
    interval_secs: float
    timeout_secs: float
    url: str = ""
    expect_status: int = 200
    host: str = "127.0.0.1"
    port: int = 0
    command: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    mode: str
    probes: tuple[ProbeSpec, ...]


# --- the config file ---------------------------------------------------------------


def _number(r: Reader, key: str, default: float) -> float:
    if not r.has(key) or r.obj[key] is None:
        return default
    value = r.obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise r.fail(key, f"expected a positive number, got {value!r}")
    return float(value)


def _interval(r: Reader) -> float:
    return max(MIN_INTERVAL_SECS, _number(r, "intervalSeconds", 30.0))


def parse_health_config(value: Any, *, source: str = "health checks") -> HealthConfig:
    r = Reader.root(value, source)
    mode = r.opt_str("mode") or DEFAULT_MODE
    if mode not in HEALTH_CHECK_MODES:
        raise r.fail("mode", f"expected one of {', '.join(HEALTH_CHECK_MODES)}, got {mode!r}")
    probes: list[ProbeSpec] = []
    for h in r.list_of("http", optional=True):
        status = h.opt_int("expectStatus")
        probes.append(
            ProbeSpec(
                name=h.str("name"),
                kind="http",
                url=h.str("url"),
                expect_status=200 if status is None else status,
                interval_secs=_interval(h),
                timeout_secs=_number(h, "timeoutSeconds", 5.0),
            )
        )
    for t in r.list_of("tcp", optional=True):
        port = t.int("port")
        if not 0 < port < 65536:
            raise t.fail("port", f"expected 1..65535, got {port}")
        probes.append(
            ProbeSpec(
                name=t.str("name"),
                kind="tcp",
                host=t.opt_str("host") or "127.0.0.1",
                port=port,
                interval_secs=_interval(t),
                timeout_secs=_number(t, "timeoutSeconds", 5.0),
            )
        )
    for e in r.list_of("exec", optional=True):
        command = e.str_list("command")
        if not command:
            raise e.fail("command", "expected a non-empty argv")
        probes.append(
            ProbeSpec(
                name=e.str("name"),
                kind="exec",
                command=tuple(command),
                interval_secs=_interval(e),
                timeout_secs=_number(e, "timeoutSeconds", 10.0),
            )
        )
    seen: set[str] = set()
    for p in probes:
        if p.name in seen:
            raise ParseError(source, "", f"probe name {p.name!r} is used twice")
        seen.add(p.name)
    return HealthConfig(mode=mode, probes=tuple(probes))


def load_health_config(path: Path) -> HealthConfig | None:
    """None if the file does not exist; BadInput (fatal) if it cannot be used."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadInput(f"cannot read health checks config {path} ({exc.strerror or exc})") from exc
    source = f"health checks config {path}"
    return parse_health_config(load_json(raw, source=source), source=source)


# --- probes --------------------------------------------------------------------------


def _reason(text: str) -> str:
    # One line, no control characters: the CP refuses a checkin carrying them.
    return escape_controls(" ".join(text.split()))[:MAX_REASON_CHARS] or "failed"


async def run_probe(spec: ProbeSpec, session: aiohttp.ClientSession | None = None) -> str | None:
    """Run one probe: None if it passed, else why it failed."""
    try:
        if spec.kind == "http":
            return await _http(spec, session)
        if spec.kind == "tcp":
            return await _tcp(spec)
        return await _exec(spec)
    except TimeoutError:
        return f"timed out after {spec.timeout_secs:g} s"
    except (OSError, aiohttp.ClientError) as exc:
        return f"{type(exc).__name__}: {exc}"


async def _http(spec: ProbeSpec, session: aiohttp.ClientSession | None) -> str | None:
    timeout = aiohttp.ClientTimeout(total=spec.timeout_secs)
    own = session is None
    s = aiohttp.ClientSession() if session is None else session
    try:
        async with s.get(spec.url, timeout=timeout, allow_redirects=False) as resp:
            await resp.read()
            if resp.status != spec.expect_status:
                return f"HTTP {resp.status}, expected {spec.expect_status}"
            return None
    finally:
        if own:
            await s.close()


async def _tcp(spec: ProbeSpec) -> str | None:
    _reader, writer = await asyncio.wait_for(
        asyncio.open_connection(spec.host, spec.port), spec.timeout_secs
    )
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


async def _exec(spec: ProbeSpec) -> str | None:
    proc = await asyncio.create_subprocess_exec(
        *spec.command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _out, err = await asyncio.wait_for(proc.communicate(), spec.timeout_secs)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] if err else []
        return f"exit {proc.returncode}" + (f": {tail[0]}" if tail else "")
    return None


# --- the scheduler ---------------------------------------------------------------------


class HealthMonitor:
    """Runs the probes in the background; `snapshot()` is what the next checkin sends."""

    def __init__(self, config: HealthConfig | None, now: Callable[[], datetime]) -> None:
        self.config = config
        self._now = now
        self._results: dict[str, HealthProbe] = {}
        if config is not None:
            for p in config.probes:
                self._results[p.name] = HealthProbe(name=p.name, kind=p.kind, status=PROBE_UNKNOWN)
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._epoch = 0
        """Bumped by `rerun`: a run that started before is discarded."""
        self._wake: dict[str, asyncio.Event] = {}

    @property
    def mode(self) -> str | None:
        return None if self.config is None else self.config.mode

    def snapshot(self) -> tuple[HealthProbe, ...]:
        return tuple(self._results[name] for name in sorted(self._results))

    def record(self, spec: ProbeSpec, failure: str | None, at: datetime) -> HealthProbe:
        prior = self._results.get(spec.name) or HealthProbe(name=spec.name, kind=spec.kind)
        if failure is None:
            result = replace(
                prior, status=PROBE_PASS, last_run_at=at, last_pass_at=at, failure_reason=None
            )
        else:
            result = replace(
                prior, status=PROBE_FAIL, last_run_at=at, failure_reason=_reason(failure)
            )
        if result.status != prior.status:
            log.info(
                "health probe name=%s kind=%s status=%s reason=%s",
                spec.name,
                spec.kind,
                result.status,
                result.failure_reason or "-",
            )
        self._results[spec.name] = result
        return result

    def rerun(self) -> None:
        """The running system changed: every probe is `unknown` until it has run on the
        new one, which it does at once."""
        if not self._results:
            return
        self._epoch += 1
        for name, prior in self._results.items():
            self._results[name] = replace(prior, status=PROBE_UNKNOWN, failure_reason=None)
        for wake in self._wake.values():
            wake.set()
        log.info("health probes rerun after a system change count=%d", len(self._results))

    async def run_once(self, spec: ProbeSpec) -> HealthProbe:
        epoch = self._epoch
        failure = await run_probe(spec, self._session)
        if epoch != self._epoch:  # started on the previous system: stale
            return self._results[spec.name]
        return self.record(spec, failure, self._now())

    async def _loop(self, spec: ProbeSpec, wake: asyncio.Event) -> None:
        while True:
            wake.clear()
            await self.run_once(spec)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), spec.interval_secs)

    async def start(self) -> None:
        if self.config is None or self.config.mode == "disabled" or not self.config.probes:
            return
        self._session = aiohttp.ClientSession()
        self._wake = {p.name: asyncio.Event() for p in self.config.probes}
        self._tasks = [
            asyncio.create_task(self._loop(p, self._wake[p.name])) for p in self.config.probes
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None
