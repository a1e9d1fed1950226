"""The CP's asyncio shell around `Lifecycle`: HTTPS fetches of the upstreams and the
timers. What the prime, the polls and the timers do is `lifecycle.py`'s, shared with
the simulated CP; this module only fetches bytes and schedules.

Upstream TLS uses the system trust store (which honours `SSL_CERT_FILE`) plus the
optional `--upstream-ca`, never a bundled root list (seed 000: a forge behind a
private CA the host trusts must work). A failed poll keeps the previous state.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from .config import CpConfig, Upstream
from .journal import SYNC_INTERVAL_SECS
from .lifecycle import (
    CHANNEL_REFS,
    NONCES,
    REVOCATIONS,
    Fetched,
    Lifecycle,
    UpstreamError,
    job_failed,
    run_job,
)
from .service import CpService

log = logging.getLogger("nixfleet.cp")

PRUNE_INTERVAL_SECS = 3600.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def upstream_ssl_context(extra_ca: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if extra_ca is not None:
        ctx.load_verify_locations(cafile=str(extra_ca))
    return ctx


async def fetch_pair(
    session: aiohttp.ClientSession, up: Upstream, timeout: float
) -> tuple[bytes, bytes]:
    """GET the artifact and its signature; any failure is an UpstreamError naming why."""
    headers = {}
    if up.token_file is not None:
        try:
            token = up.token_file.read_text().strip()
        except OSError as exc:
            raise UpstreamError(f"cannot read token file {up.token_file} ({exc.strerror})") from exc
        headers["Authorization"] = f"Bearer {token}"
    out = []
    for url in (up.artifact_url, up.signature_url):
        try:
            async with session.get(
                url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                if resp.status // 100 != 2:
                    raise UpstreamError(f"GET {url}: HTTP {resp.status}")
                out.append(await resp.read())
        except aiohttp.ClientConnectorCertificateError as exc:
            raise UpstreamError(
                f"GET {url}: TLS certificate not trusted ({exc.certificate_error})"
            ) from exc
        except aiohttp.ClientSSLError as exc:
            raise UpstreamError(f"GET {url}: TLS handshake failed ({exc})") from exc
        except aiohttp.ClientConnectionError as exc:
            raise UpstreamError(f"GET {url}: connect failed ({exc})") from exc
        except TimeoutError as exc:
            raise UpstreamError(f"GET {url}: timed out after {timeout:g} s") from exc
    return out[0], out[1]


class SnapshotCache:
    """The last verified upstream fleet artifact, kept on disk across restarts.

    Seed 000 "stair-steps backwards": a CP restarted while the forge is down must not
    fall back to the (always older) build-time artifact when it had verified a newer
    one before. The file holds the signed bytes and their signature, which are
    verified again on load, so it is no trust root: a tampered or stale file is
    simply refused. It is written atomically (temp file, fsync, rename).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved: bytes | None = None

    @property
    def where(self) -> str:
        return str(self.path)

    def load(self) -> tuple[bytes, bytes] | None:
        try:
            doc = json.loads(self.path.read_bytes())
            raw = base64.b64decode(doc["artifact"], validate=True)
            sig = base64.b64decode(doc["signature"], validate=True)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("channel-refs: snapshot cache %s unreadable, ignored (%s)", self.path, exc)
            return None
        self._saved = raw
        return raw, sig

    def save(self, raw: bytes, sig: bytes) -> None:
        """Write durably (temp file, fsync, rename, fsync the directory); raises OSError
        and leaves the previous file in place when that is impossible (a full disk)."""
        if raw == self._saved:
            return
        doc = {
            "schemaVersion": 1,
            "artifact": base64.b64encode(raw).decode("ascii"),
            "signature": base64.b64encode(sig).decode("ascii"),
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as fh:
                fh.write(json.dumps(doc).encode())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            exc.strerror = f"{self.path}: {exc.strerror or exc}"
            raise
        self._saved = raw


class CpRuntime:
    """Owns the upstream HTTP session and the CP's periodic tasks."""

    def __init__(self, config: CpConfig, service: CpService) -> None:
        self.config = config
        self.session: aiohttp.ClientSession | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.lifecycle = Lifecycle(
            service,
            cache=SnapshotCache(config.snapshot_cache) if config.snapshot_cache else None,
            build_time=self._read_build_time
            if config.artifact is not None and config.signature is not None
            else None,
            upstream_label=config.upstream_label,
        )

    async def start(self) -> None:
        """Prime, then start the loops. Runs before the port binds."""
        cfg, lc = self.config, self.lifecycle
        connector = aiohttp.TCPConnector(ssl=upstream_ssl_context(cfg.upstream_ca))
        self.session = aiohttp.ClientSession(connector=connector)
        await self.prime()
        journal_period = min(cfg.tick_interval_secs, SYNC_INTERVAL_SECS)
        for name, period, first, job in (
            ("tick", cfg.tick_interval_secs, cfg.tick_interval_secs, _timer(lc.tick)),
            ("sweep", cfg.sweep_interval_secs, 0.0, _timer(lc.sweep)),
            ("poll", cfg.poll_interval_secs, cfg.poll_interval_secs, self.poll_once),
            ("prune", PRUNE_INTERVAL_SECS, PRUNE_INTERVAL_SECS, _timer(lc.prune)),
            ("journal", journal_period, journal_period, _timer(lc.sync_journal)),
        ):
            self.tasks.append(asyncio.create_task(self._every(name, period, first, job)))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Seed 001 stops the service before the wipe: a row inserted since the last
        # scan is journaled now.
        run_job("journal", lambda: self.lifecycle.sync_journal(now=utc_now()))
        if self.session is not None:
            await self.session.close()

    async def _every(
        self, name: str, period: float, first: float, job: Callable[[], Awaitable[None]]
    ) -> None:
        await asyncio.sleep(first)
        while True:
            try:
                await job()
            except Exception as exc:
                job_failed(name, exc)
            await asyncio.sleep(period)

    # --- fetching -------------------------------------------------------------------------

    def _upstreams(self) -> list[tuple[str, Upstream]]:
        cfg = self.config
        pairs = (
            (CHANNEL_REFS, cfg.channel_refs),
            (REVOCATIONS, cfg.revocations),
            (NONCES, cfg.bootstrap_nonces),
        )
        return [(what, up) for what, up in pairs if up is not None]

    async def _fetch(self, up: Upstream) -> Fetched:
        assert self.session is not None, "runtime not started"
        try:
            return await fetch_pair(self.session, up, self.config.poll_timeout_secs)
        except UpstreamError as exc:
            return exc

    def _read_build_time(self) -> tuple[bytes, bytes]:
        cfg = self.config
        assert cfg.artifact is not None and cfg.signature is not None
        return cfg.artifact.read_bytes(), cfg.signature.read_bytes()

    async def prime(self) -> None:
        """Fetch every upstream, then `Lifecycle.prime` (forge first; seed 000).

        The whole prime, every fetch included, ends by `--prime-timeout-secs`: a forge
        that accepts connections and never answers delays the listener that long, no
        more; what did not answer in time is left to the first poll.
        """
        cfg = self.config
        deadline = asyncio.get_running_loop().time() + cfg.prime_timeout_secs
        fetched: dict[str, Fetched] = {}
        for what, up in self._upstreams():
            bound = asyncio.timeout_at(deadline)
            try:
                async with bound:
                    fetched[what] = await self._fetch(up)
                continue
            except TimeoutError:
                if not bound.expired():
                    raise
            then = (
                "starting from the snapshot cache or the build-time artifact"
                if what == CHANNEL_REFS
                else f"next try at the poll in {cfg.poll_interval_secs:g} s"
            )
            log.warning(
                "%s: prime gave up after %g s waiting for %s; %s",
                what,
                cfg.prime_timeout_secs,
                up.artifact_url,
                then,
            )
        self.lifecycle.prime(fetched, now=utc_now())

    async def poll_once(self) -> None:
        fetched = {what: await self._fetch(up) for what, up in self._upstreams()}
        self.lifecycle.poll(fetched, now=utc_now())


def _timer(job: Callable[..., object]) -> Callable[[], Awaitable[None]]:
    """A `Lifecycle` timer job (`job(now=…)`) as the loop awaits it."""

    async def run() -> None:
        job(now=utc_now())

    return run
