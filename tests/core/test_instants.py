"""Instants, closure identity and the one deadline comparison."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nixfleet.core.closure import closure_hash_from_path, parse_store_path
from nixfleet.core.deadline import deadline_passed, deadline_text_passed
from nixfleet.core.errors import ParseError
from nixfleet.core.timeutil import format_instant, format_sqlite, parse_instant

T = datetime(2026, 11, 23, 11, 38, 46, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T11:38:46Z",
        "2026-11-23T11:38:46+00:00",
        "2026-11-23 11:38:46",
        "2026-11-23T12:38:46+01:00",
        "2026-11-23T11:38:46.000000000Z",
    ],
)
def test_parse_instant_forms(text: str) -> None:
    assert parse_instant(text) == T


def test_fraction_truncated_to_micros_and_formatted_shortest() -> None:
    dt = parse_instant("2026-11-23T11:38:46.123456789Z")
    assert dt.microsecond == 123456
    assert format_instant(dt) == "2026-11-23T11:38:46.123456Z"
    assert format_instant(T) == "2026-11-23T11:38:46Z"
    assert format_instant(T.replace(microsecond=500000)) == "2026-11-23T11:38:46.500Z"
    assert format_instant(T.replace(microsecond=120)) == "2026-11-23T11:38:46.000120Z"
    assert format_sqlite(T) == "2026-11-23 11:38:46"


@pytest.mark.parametrize("bad", ["", "yesterday", "2026-13-01T00:00:00Z", "2026-11-23T11:38"])
def test_parse_instant_rejects(bad: str) -> None:
    with pytest.raises(ParseError, match="signedAt"):
        parse_instant(bad, source="fleet.json", field="meta.signedAt")


def test_deadline_fires_at_not_before() -> None:
    assert not deadline_passed(T, T - timedelta(microseconds=1))
    assert deadline_passed(T, T)
    assert deadline_passed(T, T + timedelta(seconds=1))


def test_same_day_text_deadline_compares_as_instants() -> None:
    """Seed 000: an RFC 3339 deadline 60 s ago on the same date has passed, although
    its raw text sorts above SQLite's space-separated now."""
    deadline, now = "2026-11-23T11:37:46Z", "2026-11-23 11:38:46"
    assert deadline > now  # the raw compare the old sweep did: never expires
    assert deadline_text_passed(deadline, now)
    assert not deadline_text_passed("2026-11-23T11:48:46Z", now)


def test_closure_identity_is_the_full_basename() -> None:
    base = "0123456789abcdfghijklmnpqrsvwxyz-nixos-system-h1-26.05.20260810_5176864f"
    assert closure_hash_from_path(f"/nix/store/{base}") == base
    assert closure_hash_from_path(f"/nix/store/{base}/bin/switch-to-configuration") == base
    assert closure_hash_from_path(base) == base
    sp = parse_store_path(base)
    assert sp.hash == "0123456789abcdfghijklmnpqrsvwxyz"
    assert sp.path == f"/nix/store/{base}"


@pytest.mark.parametrize(
    "bad",
    [
        "0123456789abcdfghijklmnpqrsvwxyz",  # the bare hash: the ghost-loop form
        "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x",  # 'e' is not in nix base-32
        "/run/current-system",
        "short-name",
    ],
)
def test_closure_identity_rejects(bad: str) -> None:
    with pytest.raises(ParseError):
        parse_store_path(bad)
