"""The CP's background work: the prime before listening, pollers and timers.

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
import sqlite3
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

import aiohttp

from nixfleet.core.errors import NixfleetError
from nixfleet.core.snapshot import SOURCE_BUILD_TIME, SOURCE_UPSTREAM

from .config import CpConfig, Upstream
from .dbtrouble import absorbed
from .journal import SYNC_INTERVAL_SECS
from .service import CpService

log = logging.getLogger("nixfleet.cp")

PRUNE_INTERVAL_SECS = 3600.0
SOURCE_CACHE = "cache"

T = TypeVar("T")


class Offer(Protocol):
    """`CpService.offer_revocations` / `offer_nonces`."""

    def __call__(self, raw: bytes, signature: bytes, *, now: datetime) -> None: ...


class UpstreamError(NixfleetError):
    """An upstream fetch that produced no usable bytes; the message is the reason."""


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
        self.service = service
        self.session: aiohttp.ClientSession | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.cache = SnapshotCache(config.snapshot_cache) if config.snapshot_cache else None

    async def start(self) -> None:
        """Prime synchronously, then start the loops. Runs before the port binds."""
        connector = aiohttp.TCPConnector(ssl=upstream_ssl_context(self.config.upstream_ca))
        self.session = aiohttp.ClientSession(connector=connector)
        await self.prime()
        journal_period = min(self.config.tick_interval_secs, SYNC_INTERVAL_SECS)
        for name, period, job, first in (
            (
                "tick",
                self.config.tick_interval_secs,
                self.tick_once,
                self.config.tick_interval_secs,
            ),
            ("sweep", self.config.sweep_interval_secs, self.sweep_once, 0.0),
            (
                "poll",
                self.config.poll_interval_secs,
                self.poll_once,
                self.config.poll_interval_secs,
            ),
            ("prune", PRUNE_INTERVAL_SECS, self.prune_once, PRUNE_INTERVAL_SECS),
            ("journal", journal_period, self.journal_once, journal_period),
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
        await self._run("journal", self.journal_once)
        if self.session is not None:
            await self.session.close()

    async def _every(
        self, name: str, period: float, first: float, job: Callable[[], Awaitable[None]]
    ) -> None:
        await asyncio.sleep(first)
        while True:
            await self._run(name, job)
            await asyncio.sleep(period)

    async def _run(self, name: str, job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except NixfleetError as exc:
            log.warning("%s: %s", name, exc)
        except Exception as exc:
            if not absorbed(exc, during=name):
                log.exception("%s: unexpected failure", name)

    # --- prime and polls -------------------------------------------------------------

    async def prime(self) -> None:
        """Upstream first (seed 000 stair-step fix), then the last verified upstream
        artifact from the cache; the build-time artifact only if both fail. Whatever
        the order, the snapshot never goes back to an older `signedAt`.

        The whole prime, every fetch included, ends by `--prime-timeout-secs`: a forge
        that accepts connections and never answers delays the listener that long, no more.
        """
        cfg = self.config
        deadline = asyncio.get_running_loop().time() + cfg.prime_timeout_secs
        if cfg.channel_refs is not None and await self._prime_step(
            deadline,
            "channel-refs",
            cfg.channel_refs,
            self._poll_channel_refs(timeout=cfg.poll_timeout_secs),
            then="starting from the snapshot cache or the build-time artifact",
        ):
            log.info(
                "channel-refs: primed verified-fleet from channel-refs source before "
                "opening listener"
            )
        self.offer_cache()
        if self.service.snapshot is None:
            self.offer_build_time()
        for what, up, offer in self._sidecars():
            await self._prime_step(
                deadline,
                what,
                up,
                self._poll_sidecar(what, up, offer),
                then=f"next try at the poll in {cfg.poll_interval_secs:g} s",
            )

    async def _prime_step(
        self, deadline: float, what: str, up: Upstream, step: Awaitable[T], *, then: str
    ) -> T | None:
        bound = asyncio.timeout_at(deadline)
        try:
            async with bound:
                return await step
        except TimeoutError:
            if not bound.expired():
                raise
        log.warning(
            "%s: prime gave up after %g s waiting for %s; %s",
            what,
            self.config.prime_timeout_secs,
            up.artifact_url,
            then,
        )
        return None

    def offer_cache(self) -> bool:
        if self.cache is None:
            return False
        pair = self.cache.load()
        if pair is None:
            return False
        try:
            return self.service.offer_fleet(pair[0], pair[1], now=utc_now(), source=SOURCE_CACHE)
        except NixfleetError as exc:
            log.warning("channel-refs: snapshot cache %s rejected: %s", self.cache.path, exc)
        return False

    def offer_build_time(self) -> bool:
        cfg = self.config
        if cfg.artifact is None or cfg.signature is None:
            return False
        try:
            raw, sig = cfg.artifact.read_bytes(), cfg.signature.read_bytes()
            return self.service.offer_fleet(raw, sig, now=utc_now(), source=SOURCE_BUILD_TIME)
        except OSError as exc:
            log.warning(
                "channel-refs: build-time artifact unreadable: %s (%s)", exc.filename, exc.strerror
            )
        except NixfleetError as exc:
            log.warning("channel-refs: build-time artifact rejected: %s", exc)
        return False

    async def _poll_channel_refs(self, *, timeout: float) -> bool:
        up = self.config.channel_refs
        if up is None:
            return False
        try:
            raw, sig = await fetch_pair(self._session(), up, timeout)
            self.service.offer_fleet(
                raw,
                sig,
                now=utc_now(),
                source=SOURCE_UPSTREAM,
                record=self.cache.save if self.cache is not None else None,
            )
            return True
        except NixfleetError as exc:
            self._poll_failed("channel-refs", exc)
            return False

    def _sidecars(self) -> list[tuple[str, Upstream, Offer]]:
        cfg, svc = self.config, self.service
        pairs = (
            ("revocations", cfg.revocations, svc.offer_revocations),
            ("bootstrap-nonces", cfg.bootstrap_nonces, svc.offer_nonces),
        )
        return [(what, up, offer) for what, up, offer in pairs if up is not None]

    async def _poll_sidecars(self) -> None:
        for what, up, offer in self._sidecars():
            await self._poll_sidecar(what, up, offer)

    async def _poll_sidecar(self, what: str, up: Upstream, offer: Offer) -> None:
        try:
            raw, sig = await fetch_pair(self._session(), up, self.config.poll_timeout_secs)
            offer(raw, sig, now=utc_now())
        except NixfleetError as exc:
            self._poll_failed(what, exc)
        except sqlite3.DatabaseError as exc:
            if not absorbed(exc, during=f"{what} poll"):
                raise

    def _poll_failed(self, what: str, exc: NixfleetError) -> None:
        log.warning(
            "%s: %s poll failed; retaining previous cache: %s",
            what,
            self.config.upstream_label,
            exc,
        )

    def _session(self) -> aiohttp.ClientSession:
        assert self.session is not None, "runtime not started"
        return self.session

    async def poll_once(self) -> None:
        await self._poll_channel_refs(timeout=self.config.poll_timeout_secs)
        await self._poll_sidecars()

    async def tick_once(self) -> None:
        # Re-verify the build-time artifact each tick; it replaces nothing newer.
        self.offer_build_time()
        self.service.tick(now=utc_now())

    async def sweep_once(self) -> None:
        if self.service.store is not None:
            self.service.sweep(now=utc_now())

    async def prune_once(self) -> None:
        if self.service.store is not None:
            self.service.prune(now=utc_now())

    async def journal_once(self) -> None:
        if self.service.journal is not None:
            self.service.journal.sync(now=utc_now())
