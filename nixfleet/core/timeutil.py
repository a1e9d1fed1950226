"""Instants: aware UTC datetimes, RFC 3339 on the wire and in SQLite.

Every comparison of stored instants goes through `parse_instant`, which accepts both
RFC 3339 (`T`, `Z` or an offset, up to 9 fraction digits) and SQLite's
`YYYY-MM-DD HH:MM:SS` form. Comparing the raw strings is the seed 000 rollback-timer
bug: `T` (0x54) sorts above a space (0x20).
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta

from .errors import ParseError

_INSTANT = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})"
    r"(?:\.(\d{1,9}))?"
    r"(Z|z|[+-]\d{2}:\d{2})?$"
)


def parse_instant(text: str, *, source: str = "timestamp", field: str = "") -> datetime:
    """Parse RFC 3339 or SQLite's datetime() form; a missing offset means UTC.

    Fractions beyond microseconds are truncated (Python keeps microseconds).
    """
    if isinstance(text, str):
        parsed = _parse_cached(text)
        if parsed is not None:
            return parsed
    return _parse(text, source, field)


@functools.lru_cache(maxsize=65536)
def _parse_cached(text: str) -> datetime | None:
    # Stored rows are re-read every tick: the same texts parse again and again.
    try:
        return _parse(text, "", "")
    except ParseError:
        return None


def _parse(text: str, source: str, field: str) -> datetime:
    m = _INSTANT.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ParseError(source, field, f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second, frac, offset = m.groups()
    micros = int((frac or "0")[:6].ljust(6, "0"))
    try:
        dt = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            micros,
            tzinfo=UTC,
        )
    except ValueError as exc:
        raise ParseError(source, field, f"not a valid date/time: {text!r} ({exc})") from exc
    if offset and offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        dt -= sign * timedelta(hours=hours, minutes=minutes)
    return dt


def format_instant(dt: datetime) -> str:
    """RFC 3339 with `Z` and the shortest lossless fraction: none, 3 or 6 digits."""
    if dt.tzinfo is None:
        raise ValueError("naive datetime")
    dt = dt.astimezone(UTC)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if dt.microsecond:
        # Fractions come in groups of 3 or 6 digits (protocol: .fff | .ffffff).
        micros = dt.microsecond
        base += f".{micros // 1000:03d}" if micros % 1000 == 0 else f".{micros:06d}"
    return base + "Z"


def format_sqlite(dt: datetime) -> str:
    """SQLite's own `datetime()` text form, for comparisons done in SQL."""
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
