"""Signed sidecars of a release (protocol §2.3): `revocations.json`, `bootstrap-nonces.json`.

Records are frozen; parse → dump → JCS reproduces the source (absent optionals stay
absent, instants keep their original text). `meta` is the fleet's `Meta`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .fleet import Meta, dump_meta, parse_meta
from .jsonfields import Reader
from .wire import (
    absent_keys,
    instant_text,
    put_instant,
    put_optional,
    read_instant,
    read_opt_instant,
)

_NO_ABSENT: frozenset[str] = frozenset()


def _absent_field() -> Any:
    return field(default=_NO_ABSENT, compare=False, repr=False)


def _texts_field() -> Any:
    return field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Revocation:
    """Certificates of `hostname` (short id) issued before `not_before` are refused."""

    hostname: str
    not_before: datetime
    reason: str | None = None
    revoked_by: str | None = None
    absent: frozenset[str] = _absent_field()
    texts: Mapping[str, str] = _texts_field()


@dataclass(frozen=True, slots=True, kw_only=True)
class Revocations:
    schema_version: int
    revocations: tuple[Revocation, ...]
    meta: Meta


@dataclass(frozen=True, slots=True, kw_only=True)
class BootstrapNonce:
    nonce: str
    hostname: str
    expires_at: datetime
    minted_at: datetime | None = None
    minted_by: str | None = None
    absent: frozenset[str] = _absent_field()
    texts: Mapping[str, str] = _texts_field()


@dataclass(frozen=True, slots=True, kw_only=True)
class BootstrapNonces:
    schema_version: int
    bootstrap_nonces: tuple[BootstrapNonce, ...]
    meta: Meta


# --- parsing -------------------------------------------------------------------


def _read_revocation(r: Reader) -> Revocation:
    texts: dict[str, str] = {}
    return Revocation(
        hostname=r.str("hostname"),
        not_before=read_instant(r, "notBefore", texts),
        reason=r.opt_str("reason"),
        revoked_by=r.opt_str("revokedBy"),
        absent=absent_keys(r, "reason", "revokedBy"),
        texts=texts,
    )


def _read_nonce(r: Reader) -> BootstrapNonce:
    texts: dict[str, str] = {}
    return BootstrapNonce(
        nonce=r.str("nonce"),
        hostname=r.str("hostname"),
        expires_at=read_instant(r, "expiresAt", texts),
        minted_at=read_opt_instant(r, "mintedAt", texts),
        minted_by=r.opt_str("mintedBy"),
        absent=absent_keys(r, "mintedAt", "mintedBy"),
        texts=texts,
    )


def parse_revocations(value: Any, *, source: str = "revocations.json") -> Revocations:
    r = Reader.root(value, source)
    return Revocations(
        schema_version=r.int("schemaVersion"),
        revocations=tuple(_read_revocation(e) for e in r.list_of("revocations")),
        meta=parse_meta(r.sub("meta")),
    )


def parse_bootstrap_nonces(value: Any, *, source: str = "bootstrap-nonces.json") -> BootstrapNonces:
    r = Reader.root(value, source)
    return BootstrapNonces(
        schema_version=r.int("schemaVersion"),
        bootstrap_nonces=tuple(_read_nonce(e) for e in r.list_of("bootstrapNonces")),
        meta=parse_meta(r.sub("meta")),
    )


# --- emitting ------------------------------------------------------------------


def dump_revocation(e: Revocation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "hostname": e.hostname,
        "notBefore": instant_text("notBefore", e.not_before, e.texts),
    }
    put_optional(out, "reason", e.reason, e.absent)
    put_optional(out, "revokedBy", e.revoked_by, e.absent)
    return out


def dump_revocations(doc: Revocations) -> dict[str, Any]:
    return {
        "schemaVersion": doc.schema_version,
        "revocations": [dump_revocation(e) for e in doc.revocations],
        "meta": dump_meta(doc.meta),
    }


def dump_bootstrap_nonce(e: BootstrapNonce) -> dict[str, Any]:
    out: dict[str, Any] = {
        "nonce": e.nonce,
        "hostname": e.hostname,
        "expiresAt": instant_text("expiresAt", e.expires_at, e.texts),
    }
    put_instant(out, "mintedAt", e.minted_at, e.texts, e.absent)
    put_optional(out, "mintedBy", e.minted_by, e.absent)
    return out


def dump_bootstrap_nonces(doc: BootstrapNonces) -> dict[str, Any]:
    return {
        "schemaVersion": doc.schema_version,
        "bootstrapNonces": [dump_bootstrap_nonce(e) for e in doc.bootstrap_nonces],
        "meta": dump_meta(doc.meta),
    }


# --- helpers -------------------------------------------------------------------


def nonce_entry_live(entry: BootstrapNonce, now: datetime) -> bool:
    """An allowlist entry is live while `expiresAt ≥ now`."""
    return entry.expires_at >= now


def nonce_allowlist(doc: BootstrapNonces) -> dict[str, BootstrapNonce]:
    """Entries by nonce; a repeated nonce keeps its last entry."""
    return {e.nonce: e for e in doc.bootstrap_nonces}


def prune_nonces(
    entries: Iterable[BootstrapNonce], signed_at: datetime
) -> tuple[BootstrapNonce, ...]:
    """What CI keeps when it signs at `signed_at`: entries with `expiresAt ≥ signedAt`."""
    return tuple(e for e in entries if e.expires_at >= signed_at)


def revocation_map(doc: Revocations) -> dict[str, Revocation]:
    """Entries by hostname; a repeated hostname keeps its last entry."""
    return {e.hostname: e for e in doc.revocations}
