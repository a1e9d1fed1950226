"""Signed-artifact verification, in the exact order of protocol §3.3.

1. no keys in force                → `no-trust-roots`
2. bytes not UTF-8 JSON            → `parse`; JCS fails → `canonicalize`
3. no key verifies                 → `bad-signature` (`bad-pubkey` if every usable key
                                     is malformed, `unsupported-algorithm` if no key
                                     in force has a known algorithm)
4. `schemaVersion ≠ 1`             → `schema-version`
5. `meta.signedAt` null            → `unsigned`
6. `signedAt < rejectBefore`       → `reject-before`
7. `now − signedAt > window + 60`  → `stale`
8. `signedAt − now > 60`           → `future-dated`

The signature covers JCS of the *received* bytes, never a re-serialised parse. The
key comes from the trust slot; `meta.signatureAlgorithm` is never consulted.
Every failure is a VerifyError whose `reason` is one of the names above.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import freshness
from .canonical import JsonValue, canonicalize, load_json, sha256_hex
from .errors import ParseError, VerifyError
from .signing import parse_public_key, verify_signature
from .timeutil import format_instant, parse_instant
from .trust import KeyInForce, Slot, keys_at, keys_in_force

NO_TRUST_ROOTS = "no-trust-roots"
PARSE = "parse"
CANONICALIZE = "canonicalize"
BAD_SIGNATURE = "bad-signature"
BAD_PUBKEY = "bad-pubkey"
UNSUPPORTED_ALGORITHM = "unsupported-algorithm"
SCHEMA_VERSION = "schema-version"
UNSIGNED = "unsigned"
REJECT_BEFORE = "reject-before"
STALE = "stale"
FUTURE_DATED = "future-dated"
ROLLOUT_ID_MISMATCH = "rollout-id-mismatch"


@dataclass(frozen=True, slots=True, kw_only=True)
class Verified:
    """An artifact that passed every check."""

    canonical: bytes
    """JCS of the received bytes: what was signed and what content ids hash."""
    value: JsonValue
    """The parsed document; shared with other verifications of the same bytes, so
    read-only."""
    signed_at: datetime
    signed_at_text: str
    """`meta.signedAt` exactly as received (may carry nanoseconds)."""
    key: KeyInForce
    """The first key in force that verified the signature."""


def verify_artifact(
    raw: bytes,
    signature: bytes,
    slot: Slot,
    *,
    now: datetime,
    window_secs: int,
    source: str = "artifact",
) -> Verified:
    """Run the §3.3 checks on an artifact's bytes and its raw detached signature."""
    # 1. Trust roots, before looking at the bytes at all.
    if not keys_at(slot, now):
        raise VerifyError(NO_TRUST_ROOTS, "trust slot has no key in force")

    # 2-3. Parse, canonicalize, find the key that signed it (memoised: see below).
    value, canonical, key = _authenticate(
        raw, signature, tuple(keys_in_force(slot, now)), tuple(keys_at(slot, now)), source
    )

    # 4-5. Schema and stamp, only now that the content is authentic.
    obj: dict[str, Any] = value if isinstance(value, dict) else {}
    version = obj.get("schemaVersion")
    if type(version) is not int or version != 1:
        raise VerifyError(SCHEMA_VERSION, f"schemaVersion is {version!r}, want 1")
    meta = obj.get("meta")
    signed_at_text = meta.get("signedAt") if isinstance(meta, dict) else None
    if signed_at_text is None:
        raise VerifyError(UNSIGNED, "meta.signedAt is null")
    if not isinstance(signed_at_text, str):
        raise VerifyError(PARSE, f"{source}: meta.signedAt: expected a string")
    try:
        signed_at = parse_instant(signed_at_text, source=source, field="meta.signedAt")
    except ParseError as exc:
        raise VerifyError(PARSE, str(exc)) from exc

    # 6-8. Rotation floor, then freshness.
    reject_before = slot.reject_before_at
    if reject_before is not None and signed_at < reject_before:
        raise VerifyError(
            REJECT_BEFORE, f"signedAt {signed_at_text} < rejectBefore {slot.reject_before}"
        )
    if freshness.is_stale(signed_at, now, window_secs):
        raise VerifyError(
            STALE,
            f"signedAt {signed_at_text} is {freshness.age_secs(signed_at, now)} s old "
            f"at {format_instant(now)}, window {window_secs} s "
            f"+ {freshness.CLOCK_SLACK_SECS} s",
        )
    if freshness.is_future_dated(signed_at, now):
        raise VerifyError(
            FUTURE_DATED,
            f"signedAt {signed_at_text} is {-freshness.age_secs(signed_at, now)} s ahead "
            f"of {format_instant(now)}, beyond the {freshness.CLOCK_SLACK_SECS} s clock-skew "
            "tolerance",
        )
    return Verified(
        canonical=canonical,
        value=value,
        signed_at=signed_at,
        signed_at_text=signed_at_text,
        key=key,
    )


def verify_rollout_manifest(
    raw: bytes,
    signature: bytes,
    slot: Slot,
    *,
    now: datetime,
    rollout_id: str,
    source: str = "rollout manifest",
) -> Verified:
    """Sidecar rules with the fixed 3600 s window, then hash = the advertised id."""
    verified = verify_artifact(
        raw, signature, slot, now=now, window_secs=freshness.MANIFEST_WINDOW_SECS, source=source
    )
    if not rollout_id_matches(verified.canonical, rollout_id):
        actual = sha256_hex(verified.canonical)
        raise VerifyError(ROLLOUT_ID_MISMATCH, f"manifest hashes to {actual}, not {rollout_id}")
    return verified


def rollout_id_matches(canonical: bytes, rollout_id: str) -> bool:
    """A rollout manifest is bound to its id: the SHA-256 of its canonical bytes. The
    one rule the CP's relay and the agent's check share (a renamed manifest fails)."""
    return sha256_hex(canonical) == rollout_id.lower()


@functools.lru_cache(maxsize=64)
def _authenticate(
    raw: bytes,
    signature: bytes,
    usable: tuple[KeyInForce, ...],
    in_force: tuple[KeyInForce, ...],
    source: str,
) -> tuple[JsonValue, bytes, KeyInForce]:
    """Steps 2–3, a pure function of the bytes and the keys in force, memoised: a
    CP re-verifies the same artifact every tick and a simulated fleet verifies one
    manifest once per host. Failures raise and are not cached. The parsed value is
    shared between callers, so it must be treated as read-only."""
    try:
        value = load_json(raw, source=source)
    except ParseError as exc:
        raise VerifyError(PARSE, str(exc)) from exc
    try:
        canonical = canonicalize(raw, source=source)
    except ParseError as exc:
        raise VerifyError(CANONICALIZE, str(exc)) from exc
    return value, canonical, _verifying_key(usable, in_force, canonical, signature)


def _verifying_key(
    usable: tuple[KeyInForce, ...],
    in_force: tuple[KeyInForce, ...],
    message: bytes,
    signature: bytes,
) -> KeyInForce:
    if not usable:
        algorithms = ", ".join(sorted({k.key.algorithm for k in in_force}))
        raise VerifyError(
            UNSUPPORTED_ALGORITHM, f"no key in force has a known algorithm ({algorithms})"
        )
    bad_keys: list[str] = []
    for candidate in usable:
        try:
            public = parse_public_key(candidate.key.algorithm, candidate.key.public)
        except VerifyError as exc:
            bad_keys.append(f"{candidate.role}: {exc.detail}")
            continue
        if verify_signature(public, message, signature):
            return candidate
    if len(bad_keys) == len(usable):
        raise VerifyError(BAD_PUBKEY, "; ".join(bad_keys))
    roles = ", ".join(f"{k.role} ({k.key.algorithm})" for k in usable)
    raise VerifyError(BAD_SIGNATURE, f"no key in force verifies the signature (tried {roles})")
