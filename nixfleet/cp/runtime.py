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
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from nixfleet.core.errors import NixfleetError
from nixfleet.core.snapshot import SOURCE_BUILD_TIME, SOURCE_UPSTREAM

from .config import CpConfig, Upstream
from .service import CpService

log = logging.getLogger("nixfleet.cp")

PRUNE_INTERVAL_SECS = 3600.0
SOURCE_CACHE = "cache"


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
        ):
            self.tasks.append(asyncio.create_task(self._every(name, period, first, job)))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.session is not None:
            await self.session.close()

    async def _every(
        self, name: str, period: float, first: float, job: Callable[[], Awaitable[None]]
    ) -> None:
        await asyncio.sleep(first)
        while True:
            try:
                await job()
            except NixfleetError as exc:
                log.warning("%s: %s", name, exc)
            except Exception:
                log.exception("%s: unexpected failure", name)
            await asyncio.sleep(period)

    # --- prime and polls -------------------------------------------------------------

    async def prime(self) -> None:
        """Upstream first (seed 000 stair-step fix), then the last verified upstream
        artifact from the cache; the build-time artifact only if both fail. Whatever
        the order, the snapshot never goes back to an older `signedAt`."""
        if self.config.channel_refs is not None:
            ok = await self._poll_channel_refs(timeout=self.config.prime_timeout_secs)
            if ok:
                log.info(
                    "channel-refs: primed verified-fleet from channel-refs source before "
                    "opening listener"
                )
        self.offer_cache()
        if self.service.snapshot is None:
            self.offer_build_time()
        await self._poll_sidecars()

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

    async def _poll_sidecars(self) -> None:
        cfg = self.config
        if cfg.revocations is not None:
            try:
                raw, sig = await fetch_pair(self._session(), cfg.revocations, cfg.poll_timeout_secs)
                self.service.offer_revocations(raw, sig, now=utc_now())
            except NixfleetError as exc:
                self._poll_failed("revocations", exc)
        if cfg.bootstrap_nonces is not None:
            try:
                raw, sig = await fetch_pair(
                    self._session(), cfg.bootstrap_nonces, cfg.poll_timeout_secs
                )
                self.service.offer_nonces(raw, sig, now=utc_now())
            except NixfleetError as exc:
                self._poll_failed("bootstrap-nonces", exc)

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
