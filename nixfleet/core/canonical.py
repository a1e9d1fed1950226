"""Canonical JSON bytes (RFC 8785, JCS): what every signature and content hash covers."""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import rfc8785

from .errors import ParseError

JsonValue = Any  # JSON values are dynamically shaped; records validate them on parse.


def canonical_bytes(value: JsonValue, *, source: str = "document") -> bytes:
    """JCS bytes of an in-memory JSON value."""
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise ParseError(source, "", f"cannot canonicalize ({exc})") from exc


def load_json(raw: bytes, *, source: str = "document") -> JsonValue:
    """Parse UTF-8 JSON bytes; duplicate keys and non-finite numbers are refused."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(source, "", f"not UTF-8 ({exc.reason} at byte {exc.start})") from exc

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, val in pairs:
            if key in out:
                raise ParseError(source, key, "duplicate key")
            out[key] = val
        return out

    def no_constant(name: str) -> Any:
        raise ParseError(source, "", f"non-finite number {name}")

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise ParseError(source, "", f"not JSON ({exc.msg} at {where})") from exc
    except RecursionError as exc:
        raise ParseError(source, "", "not JSON we accept (nested too deeply)") from exc
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise ParseError(source, "", f"not JSON we accept ({exc})") from exc


def canonicalize(raw: bytes, *, source: str = "document") -> bytes:
    """JCS bytes of received JSON bytes.

    Memoised on the bytes: a CP relays one manifest to every host and a simulated
    fleet verifies it once per host, and pure-Python JCS of a 10,000-host document
    takes a tenth of a second. Failures are not cached.
    """
    return _canonicalize(raw, source)


@functools.lru_cache(maxsize=64)
def _canonicalize(raw: bytes, source: str) -> bytes:
    return canonical_bytes(load_json(raw, source=source), source=source)


@functools.lru_cache(maxsize=256)
def sha256_hex(data: bytes) -> str:
    """Memoised: rollout ids are recomputed from the same manifest bytes per host."""
    return hashlib.sha256(data).hexdigest()
