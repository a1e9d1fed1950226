"""Rollout manifests for the agent (lifecycle §5.10, protocol §2.2).

A cache hit re-verifies the cached bytes; a miss (or a cached copy that no longer
verifies) GETs `/v1/rollouts/<id>` and `/sig` from the CP, verifies and writes
through to `<state-dir>/rollouts/<id>.json{,.sig}`. Verification is the CI release
key's signature, the fixed 3600 s window (+60 s), rejectBefore, the id recomputed
from the *received* bytes, and `(hostname, waveIndex or 0)` in the hostSet.

Outcomes, as the reducer wants them: HTTP error, 404 or no answer ⇒ `missing`; a
signature/freshness/rejectBefore failure ⇒ `verify-failed`; the id differing from
the advertised one or this host missing from the hostSet ⇒ `mismatch`; signed ahead
of this host's clock ⇒ `clock-skew`, one line telling the operator to fix the clock
(a cached copy is kept then: its bytes are fine).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from nixfleet.core.agent_events import ManifestFailed, ManifestOk
from nixfleet.core.errors import NixfleetError, PeerError, Unreachable
from nixfleet.core.manifest_check import check_manifest
from nixfleet.core.trust import Trust

from .statedir import ManifestCache

log = logging.getLogger("nixfleet.agent")


class ManifestSource(Protocol):
    """Where uncached manifests come from (the CP); raises Unreachable or PeerError."""

    async def fetch_manifest(self, rollout_id: str) -> tuple[bytes, bytes]: ...


class ManifestFetcher:
    def __init__(
        self,
        *,
        source: ManifestSource,
        cache: ManifestCache,
        trust: Callable[[], Trust],
        hostname: str,
    ) -> None:
        self._source = source
        self._cache = cache
        self._trust = trust
        self._hostname = hostname

    def _check(
        self, raw: bytes, sig: bytes, rollout_id: str, wave_index: int, now: datetime
    ) -> ManifestOk | ManifestFailed:
        # The same check the simulated hosts run: one copy, in the core.
        return check_manifest(
            raw,
            sig,
            self._trust(),
            rollout_id=rollout_id,
            hostname=self._hostname,
            wave_index=wave_index,
            now=now,
        )

    async def fetch(
        self, rollout_id: str, wave_index: int, now: datetime
    ) -> ManifestOk | ManifestFailed:
        try:
            cached = self._cache.get(rollout_id)
        except NixfleetError as exc:
            return ManifestFailed(kind="mismatch", reason=str(exc))
        if cached is not None:
            result = self._check(*cached, rollout_id, wave_index, now)
            if isinstance(result, ManifestOk):
                log.info("manifest ok rollout=%s source=cache", rollout_id)
                return result
            if result.kind == "clock-skew":
                return _refused(rollout_id, result)
            log.warning(
                "cached manifest no longer verifies; discarded, fetching again file=%s reason=%s",
                self._cache.path(rollout_id),
                result.reason,
            )
            try:
                self._cache.discard(rollout_id)
            except OSError as exc:
                log.error("cannot drop cached manifest rollout=%s reason=%s", rollout_id, exc)
        try:
            raw, sig = await self._source.fetch_manifest(rollout_id)
        except (Unreachable, PeerError) as exc:
            log.warning("manifest missing rollout=%s reason=%s", rollout_id, exc)
            return ManifestFailed(kind="missing", reason=str(exc))
        result = self._check(raw, sig, rollout_id, wave_index, now)
        if isinstance(result, ManifestOk):
            try:
                self._cache.put(rollout_id, raw, sig)
            except OSError as exc:
                log.error("cannot cache manifest rollout=%s reason=%s", rollout_id, exc)
            log.info("manifest ok rollout=%s source=cp", rollout_id)
            return result
        return _refused(rollout_id, result)


def _refused(rollout_id: str, result: ManifestFailed) -> ManifestFailed:
    if result.kind == "clock-skew":
        log.warning("manifest refused: %s rollout=%s", result.reason, rollout_id)
    else:
        log.warning(
            "manifest refused rollout=%s kind=%s reason=%s", rollout_id, result.kind, result.reason
        )
    return result
