"""`trust.json` (protocol §2.4): the public keys a CP or agent verifies against.

A slot holds `current`, `previous` and an announced `successor` (in force until
`retireAt`). Verification picks keys by slot and each key's own `algorithm`, never
by an artifact's `meta.signatureAlgorithm`, which an attacker could set to
downgrade. Keys with algorithms this build does not know are kept (so a newer
trust.json still loads and dumps back unchanged) but never used.

`parse_trust` → `dump_trust` is lossless: optional keys absent in the source stay
absent, present `null`s stay `null`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import ParseError
from .jsonfields import Reader
from .signing import ALGORITHMS
from .timeutil import parse_instant

TRUST_SCHEMA_VERSION = 1

CURRENT = "current"
PREVIOUS = "previous"
SUCCESSOR = "successor"

_NO_ABSENT: frozenset[str] = frozenset()


def _absent_field() -> Any:
    return field(default=_NO_ABSENT, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustKey:
    algorithm: str
    """`ed25519` or `ecdsa-p256`; anything else is kept but never verifies."""
    public: str
    """base64: 32 raw bytes (ed25519) or 64-byte X‖Y (P-256)."""

    @property
    def is_supported(self) -> bool:
        return self.algorithm in ALGORITHMS


@dataclass(frozen=True, slots=True, kw_only=True)
class Slot:
    current: TrustKey | None = None
    previous: TrustKey | None = None
    reject_before: str | None = None
    """RFC 3339 as written; refuses artifacts signed earlier, whichever key signed."""
    successor: TrustKey | None = None
    retire_at: str | None = None
    """RFC 3339 as written; the successor is in force only before it."""
    absent: frozenset[str] = _absent_field()

    @property
    def reject_before_at(self) -> datetime | None:
        if self.reject_before is None:
            return None
        return parse_instant(self.reject_before, source="trust.json", field="rejectBefore")

    @property
    def retire_at_at(self) -> datetime | None:
        if self.retire_at is None:
            return None
        return parse_instant(self.retire_at, source="trust.json", field="retireAt")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyInForce:
    """A key of a slot usable at some instant, and which role it holds there."""

    role: str
    """`current`, `previous` or `successor`."""
    key: TrustKey


@dataclass(frozen=True, slots=True, kw_only=True)
class Trust:
    schema_version: int
    ci_release_key: Slot
    cache_keys: tuple[str, ...]
    """Opaque nix `trusted-public-keys` entries."""
    org_root_key: Slot | None
    root_ca_pem: str | None = None
    issuance_ca_pems: tuple[str, ...] | None = None
    absent: frozenset[str] = _absent_field()


# --- keys in force ------------------------------------------------------------------


def keys_at(slot: Slot, now: datetime) -> list[KeyInForce]:
    """Current, previous, then the successor while `now < retireAt`, any algorithm.

    A successor without `retireAt` is not in force: its window is unbounded, so the
    operator must promote it to `current` instead.
    """
    out = []
    if slot.current is not None:
        out.append(KeyInForce(role=CURRENT, key=slot.current))
    if slot.previous is not None:
        out.append(KeyInForce(role=PREVIOUS, key=slot.previous))
    retire_at = slot.retire_at_at
    if slot.successor is not None and retire_at is not None and now < retire_at:
        out.append(KeyInForce(role=SUCCESSOR, key=slot.successor))
    return out


def keys_in_force(slot: Slot, now: datetime) -> list[KeyInForce]:
    """`keys_at` minus keys with algorithms this build cannot verify."""
    return [k for k in keys_at(slot, now) if k.key.is_supported]


def successor_due(slot: Slot, now: datetime) -> bool:
    """`retireAt ≤ now` with a successor set: the operator should rotate trust."""
    retire_at = slot.retire_at_at
    return slot.successor is not None and retire_at is not None and retire_at <= now


# --- parsing --------------------------------------------------------------------------


def _absent(r: Reader, *keys: str) -> frozenset[str]:
    return frozenset(k for k in keys if not r.has(k))


def _parse_key(r: Reader, key: str) -> TrustKey | None:
    sub = r.opt_sub(key)
    if sub is None:
        return None
    return TrustKey(algorithm=sub.str("algorithm"), public=sub.str("public"))


def _opt_instant(r: Reader, key: str) -> str | None:
    text = r.opt_str(key)
    if text is not None:
        parse_instant(text, source=r.source, field=r.field(key))  # validate now, keep text
    return text


def parse_slot(r: Reader) -> Slot:
    return Slot(
        current=_parse_key(r, "current"),
        previous=_parse_key(r, "previous"),
        reject_before=_opt_instant(r, "rejectBefore"),
        successor=_parse_key(r, "successor"),
        retire_at=_opt_instant(r, "retireAt"),
        absent=_absent(r, "current", "previous", "rejectBefore", "successor", "retireAt"),
    )


def parse_trust(value: Any, *, source: str = "trust.json") -> Trust:
    """Validate a parsed trust document; errors name the source and the field."""
    r = Reader.root(value, source)
    version = r.int("schemaVersion")
    if version != TRUST_SCHEMA_VERSION:
        raise ParseError(source, "schemaVersion", f"unsupported version {version}, want 1")
    org = r.opt_sub("orgRootKey")
    cas = r.raw("issuanceCAPems", None)
    return Trust(
        schema_version=version,
        ci_release_key=parse_slot(r.sub("ciReleaseKey")),
        cache_keys=r.str_list("cacheKeys"),
        org_root_key=None if org is None else parse_slot(org),
        root_ca_pem=r.opt_str("rootCAPem"),
        issuance_ca_pems=None if cas is None else r.str_list("issuanceCAPems"),
        absent=_absent(r, "orgRootKey", "rootCAPem", "issuanceCAPems"),
    )


# --- emitting ---------------------------------------------------------------------------


def _put(out: dict[str, Any], key: str, value: Any, absent: frozenset[str]) -> None:
    """Emit `key` unless it was absent in the source and still carries no value."""
    if key in absent and value is None:
        return
    out[key] = value


def dump_key(k: TrustKey | None) -> dict[str, str] | None:
    return None if k is None else {"algorithm": k.algorithm, "public": k.public}


def dump_slot(s: Slot) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _put(out, "current", dump_key(s.current), s.absent)
    _put(out, "previous", dump_key(s.previous), s.absent)
    _put(out, "rejectBefore", s.reject_before, s.absent)
    _put(out, "successor", dump_key(s.successor), s.absent)
    _put(out, "retireAt", s.retire_at, s.absent)
    return out


def dump_trust(t: Trust) -> dict[str, Any]:
    out: dict[str, Any] = {
        "schemaVersion": t.schema_version,
        "ciReleaseKey": dump_slot(t.ci_release_key),
        "cacheKeys": list(t.cache_keys),
    }
    _put(out, "orgRootKey", None if t.org_root_key is None else dump_slot(t.org_root_key), t.absent)
    _put(out, "rootCAPem", t.root_ca_pem, t.absent)
    cas = None if t.issuance_ca_pems is None else list(t.issuance_ca_pems)
    _put(out, "issuanceCAPems", cas, t.absent)
    return out
