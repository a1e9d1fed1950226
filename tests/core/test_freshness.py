"""Freshness rules (protocol §4): boundaries are exact, slack is 60 s, tokens get none."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nixfleet.core import freshness
from nixfleet.core.freshness import (
    age_secs,
    is_future_dated,
    is_stale,
    is_target_stale,
    is_token_expired,
    is_token_not_yet_valid,
    is_token_valid,
)

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
US = timedelta(microseconds=1)


def test_constants() -> None:
    assert freshness.CLOCK_SLACK_SECS == 60
    assert freshness.DEFAULT_FRESHNESS_WINDOW_SECS == 2_592_000
    assert freshness.MANIFEST_WINDOW_SECS == 3600


@pytest.mark.parametrize(
    ("age", "stale"),
    [
        (timedelta(seconds=3600 + 60), False),  # exactly window + slack: still fresh
        (timedelta(seconds=3600 + 60) + US, True),
        (timedelta(seconds=3600), False),
        (timedelta(0), False),
        (timedelta(seconds=-3600), False),  # future is not stale
    ],
)
def test_is_stale_boundary(age: timedelta, stale: bool) -> None:
    assert is_stale(T0 - age, T0, 3600) is stale


def test_is_stale_custom_slack() -> None:
    assert is_stale(T0 - timedelta(seconds=11), T0, 10, slack_secs=0) is True
    assert is_stale(T0 - timedelta(seconds=10), T0, 10, slack_secs=0) is False


@pytest.mark.parametrize(
    ("ahead", "future"),
    [
        (timedelta(seconds=60), False),
        (timedelta(seconds=60) + US, True),
        (timedelta(seconds=-10_000_000), False),
        (timedelta(0), False),
    ],
)
def test_is_future_dated_boundary(ahead: timedelta, future: bool) -> None:
    assert is_future_dated(T0 + ahead, T0) is future


def test_target_staleness_has_no_future_check() -> None:
    assert is_target_stale(T0 + timedelta(days=365), T0, 600) is False
    assert is_target_stale(T0 - timedelta(seconds=660), T0, 600) is False
    assert is_target_stale(T0 - timedelta(seconds=661), T0, 600) is True


def test_token_window_has_no_slack() -> None:
    issued, expires = T0, T0 + timedelta(hours=24)
    assert is_token_valid(issued, expires, issued) is True  # issuedAt inclusive
    assert is_token_valid(issued, expires, issued - US) is False
    assert is_token_not_yet_valid(issued, issued - US) is True
    assert is_token_valid(issued, expires, expires - US) is True
    assert is_token_valid(issued, expires, expires) is False  # expiresAt exclusive
    assert is_token_expired(expires, expires) is True
    assert is_token_expired(expires, expires - US) is False


@pytest.mark.parametrize(
    ("delta", "age"),
    [
        (timedelta(seconds=90), 90),
        (timedelta(seconds=90, microseconds=999_999), 90),
        (timedelta(0), 0),
        (timedelta(seconds=-90), -90),
        (timedelta(seconds=-89, microseconds=-1), -90),  # floored
    ],
)
def test_age_secs(delta: timedelta, age: int) -> None:
    assert age_secs(T0 - delta, T0) == age
