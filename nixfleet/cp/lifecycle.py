"""The CP's start-up and background work, synchronous: the prime, the polls, the tick,
the sweep, the prune and the operator journal's sync.

Shells only fetch and schedule. The aiohttp runtime (`runtime.py`) awaits its HTTPS
fetches and asyncio timers, the simulated CP (`fleet_sim/cp.py`) its forge and simpy
timers; both hand what they fetched, (bytes, signature) or the `UpstreamError` saying
why not, to a `Lifecycle`. So the prime order and the snapshot rules the simulator
exercises are the CP's own, and a bug put back here fails a simulated scenario.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

from nixfleet.core.errors import NixfleetError
from nixfleet.core.snapshot import SOURCE_BUILD_TIME, SOURCE_UPSTREAM

from .dbtrouble import absorbed
from .service import CpService

log = logging.getLogger("nixfleet.cp")

CHANNEL_REFS = "channel-refs"
REVOCATIONS = "revocations"
NONCES = "bootstrap-nonces"
"""The upstreams, by the name their log lines carry."""

SOURCE_CACHE = "cache"
PRIME_ORDER: tuple[str, ...] = (SOURCE_UPSTREAM, SOURCE_CACHE, SOURCE_BUILD_TIME)
"""Where the first snapshot comes from, in turn (seed 000 stair-step fix): the forge,
then its last verified artifact from the snapshot cache, then the build-time artifact,
which is always a release behind and so is offered only while there is no snapshot.
An offer never replaces a newer snapshot."""


class UpstreamError(NixfleetError):
    """An upstream fetch that produced no usable bytes; the message is the reason."""


Fetched = tuple[bytes, bytes] | UpstreamError
"""What a shell got of an upstream: the artifact and its signature, or why not."""


class SnapshotRecord(Protocol):
    """The snapshot cache: the last verified upstream artifact, kept across restarts."""

    @property
    def where(self) -> str:
        """Where it is kept, for log lines."""

    def load(self) -> tuple[bytes, bytes] | None: ...

    def save(self, raw: bytes, sig: bytes) -> None:
        """Durably, or raise OSError (the newer snapshot is then not served)."""


def job_failed(name: str, exc: Exception) -> None:
    """A background job failed: one line for a NixfleetError, DB trouble as `dbtrouble`
    says, a traceback for anything else. The job runs again at its next period."""
    if isinstance(exc, NixfleetError):
        log.warning("%s: %s", name, exc)
    elif not absorbed(exc, during=name):
        log.error("%s: unexpected failure", name, exc_info=exc)


def run_job(name: str, job: Callable[[], object]) -> None:
    try:
        job()
    except Exception as exc:
        job_failed(name, exc)


def _pair(fetched: Fetched) -> tuple[bytes, bytes]:
    if isinstance(fetched, UpstreamError):
        raise fetched
    return fetched


class Lifecycle:
    """What the CP does at start and on its timers, given what its shell fetched.

    `cache` is the snapshot cache (None: none configured); `build_time` reads the
    artifact baked into the CP's closure (None: none; raises OSError when unreadable);
    `upstream_label` names the forge in poll-failure lines.
    """

    def __init__(
        self,
        service: CpService,
        *,
        cache: SnapshotRecord | None,
        build_time: Callable[[], tuple[bytes, bytes]] | None,
        upstream_label: str,
    ) -> None:
        self.service = service
        self.cache = cache
        self.build_time = build_time
        self.upstream_label = upstream_label

    # --- start-up -----------------------------------------------------------------------

    def prime(self, fetched: Mapping[str, Fetched], *, now: datetime) -> None:
        """Before the listener opens: the fleet snapshot from `PRIME_ORDER`, then the
        sidecars. `fetched` holds each configured upstream the shell got an answer
        from within its prime bound (an absent one is left to the first poll)."""
        upstream = fetched.get(CHANNEL_REFS)
        for source in PRIME_ORDER:
            if source == SOURCE_UPSTREAM:
                if upstream is not None and self.offer_upstream(upstream, now=now):
                    log.info(
                        "channel-refs: primed verified-fleet from channel-refs source before "
                        "opening listener"
                    )
            elif source == SOURCE_CACHE:
                self.offer_cache(now=now)
            elif self.service.snapshot is None:
                self.offer_build_time(now=now)
        for what, got in fetched.items():
            if what != CHANNEL_REFS:
                self.offer_sidecar(what, got, now=now)

    def offer_cache(self, *, now: datetime) -> bool:
        if self.cache is None:
            return False
        pair = self.cache.load()
        if pair is None:
            return False
        try:
            return self.service.offer_fleet(pair[0], pair[1], now=now, source=SOURCE_CACHE)
        except NixfleetError as exc:
            log.warning("channel-refs: snapshot cache %s rejected: %s", self.cache.where, exc)
        return False

    def offer_build_time(self, *, now: datetime) -> bool:
        if self.build_time is None:
            return False
        try:
            raw, sig = self.build_time()
            return self.service.offer_fleet(raw, sig, now=now, source=SOURCE_BUILD_TIME)
        except OSError as exc:
            log.warning(
                "channel-refs: build-time artifact unreadable: %s (%s)", exc.filename, exc.strerror
            )
        except NixfleetError as exc:
            log.warning("channel-refs: build-time artifact rejected: %s", exc)
        return False

    # --- polls --------------------------------------------------------------------------

    def poll(self, fetched: Mapping[str, Fetched], *, now: datetime) -> None:
        """One poll of every configured upstream; a failed one keeps what was there."""
        for what, got in fetched.items():
            if what == CHANNEL_REFS:
                self.offer_upstream(got, now=now)
            else:
                self.offer_sidecar(what, got, now=now)

    def offer_upstream(self, fetched: Fetched, *, now: datetime) -> bool:
        """The forge's fleet artifact; a newer one is recorded in the snapshot cache
        before it is served. False (said) when the fetch or the offer failed."""
        try:
            raw, sig = _pair(fetched)
            self.service.offer_fleet(
                raw,
                sig,
                now=now,
                source=SOURCE_UPSTREAM,
                record=self.cache.save if self.cache is not None else None,
            )
        except NixfleetError as exc:
            self._poll_failed(CHANNEL_REFS, exc)
            return False
        return True

    def offer_sidecar(self, what: str, fetched: Fetched, *, now: datetime) -> None:
        svc = self.service
        offer = svc.offer_revocations if what == REVOCATIONS else svc.offer_nonces
        try:
            raw, sig = _pair(fetched)
            offer(raw, sig, now=now)
        except NixfleetError as exc:
            self._poll_failed(what, exc)
        except sqlite3.DatabaseError as exc:
            if not absorbed(exc, during=f"{what} poll"):
                raise

    def _poll_failed(self, what: str, exc: NixfleetError) -> None:
        log.warning(
            "%s: %s poll failed; retaining previous cache: %s", what, self.upstream_label, exc
        )

    # --- timers -------------------------------------------------------------------------

    def tick(self, *, now: datetime) -> None:
        # Re-verify the build-time artifact each tick; it replaces nothing newer.
        self.offer_build_time(now=now)
        self.service.tick(now=now)

    def sweep(self, *, now: datetime) -> int:
        """Rollback timer: how many dispatches expired."""
        return self.service.sweep(now=now) if self.service.store is not None else 0

    def prune(self, *, now: datetime) -> None:
        if self.service.store is not None:
            self.service.prune(now=now)

    def sync_journal(self, *, now: datetime) -> None:
        if self.service.journal is not None:
            self.service.journal.sync(now=now)
