"""The agent's manifest check (lifecycle §5.10), shared by the daemon and the simulator.

The manifest is verified over the bytes received: CI's signature, the fixed 3600 s
window, rejectBefore, its content hash equal to the advertised rolloutId, and this
host listed at the target's wave. A manifest signed further ahead than the clock slack
is this host's clock being behind, not a bad manifest: `clock-skew`, said so plainly.
"""

from __future__ import annotations

import functools
from datetime import datetime

from .agent_events import ManifestFailed, ManifestOk
from .canonical import load_json
from .errors import ParseError, VerifyError
from .freshness import age_secs
from .manifest import listed_hosts, lists_host, parse_manifest
from .timeutil import parse_instant
from .trust import Trust
from .verify import FUTURE_DATED, ROLLOUT_ID_MISMATCH, verify_rollout_manifest


def check_manifest(
    body: bytes,
    signature: bytes | None,
    trust: Trust,
    *,
    rollout_id: str,
    hostname: str,
    wave_index: int,
    now: datetime,
) -> ManifestOk | ManifestFailed:
    if signature is None:
        return ManifestFailed(kind="missing", reason=f"rollout {rollout_id}: no signature served")
    try:
        verified = verify_rollout_manifest(
            body, signature, trust.ci_release_key, now=now, rollout_id=rollout_id
        )
    except VerifyError as exc:
        if exc.reason == ROLLOUT_ID_MISMATCH:
            return ManifestFailed(kind="mismatch", reason=str(exc))
        if exc.reason == FUTURE_DATED:
            return ManifestFailed(kind="clock-skew", reason=_clock_behind(body, now))
        return ManifestFailed(kind="verify-failed", reason=str(exc))
    try:
        listed = _host_set(verified.canonical, rollout_id)
    except ParseError as exc:
        return ManifestFailed(kind="verify-failed", reason=str(exc))
    if not lists_host(listed, hostname, wave_index):
        return ManifestFailed(
            kind="mismatch",
            reason=f"({hostname}, wave {wave_index}) is not in rollout {rollout_id}'s hostSet",
        )
    return ManifestOk()


def _clock_behind(body: bytes, now: datetime) -> str:
    """What to tell the operator about a future-dated manifest (its signature has
    verified, so `meta.signedAt` is the signer's word)."""
    signed_at_text = load_json(body)["meta"]["signedAt"]
    behind = -age_secs(parse_instant(signed_at_text, source="rollout manifest"), now)
    return (
        f"your clock is {behind} s behind the manifest's signedAt ({signed_at_text}); "
        "fix the host clock"
    )


@functools.lru_cache(maxsize=16)
def _host_set(canonical: bytes, rollout_id: str) -> frozenset[tuple[str, int]]:
    """The manifest's (hostname, waveIndex) pairs; memoised on the verified bytes, as
    every host of a rollout checks the same manifest."""
    manifest = parse_manifest(load_json(canonical), source=f"rollout {rollout_id}")
    return listed_hosts(manifest)
