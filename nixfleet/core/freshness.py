"""Freshness rules (protocol §4), each written once as a pure function of instants.

The CP's sidecar checks, the agent's target and manifest checks and token validity
all call these; nothing else compares a `signedAt` with `now`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

CLOCK_SLACK_SECS = 60
"""Allowed clock skew between signer and verifier, both ways."""

DEFAULT_FRESHNESS_WINDOW_SECS = 2_592_000
"""The CP's global `--freshness-window-secs` (30 days)."""

MANIFEST_WINDOW_SECS = 3600
"""Rollout manifests use a fixed one-hour window, whatever the channel says."""


def age_secs(signed_at: datetime, now: datetime) -> int:
    """Whole seconds since `signed_at` (floored; negative if it lies in the future)."""
    return (now - signed_at) // timedelta(seconds=1)


def is_stale(
    signed_at: datetime, now: datetime, window_secs: int, slack_secs: int = CLOCK_SLACK_SECS
) -> bool:
    """`now − signedAt > window + slack`: exactly window + slack old is still fresh."""
    return now - signed_at > timedelta(seconds=window_secs + slack_secs)


def is_future_dated(
    signed_at: datetime, now: datetime, slack_secs: int = CLOCK_SLACK_SECS
) -> bool:
    """`signedAt − now > slack`: signed further ahead than clock skew explains."""
    return signed_at - now > timedelta(seconds=slack_secs)


def is_target_stale(signed_at: datetime, now: datetime, freshness_window_secs: int) -> bool:
    """The agent's target check; deliberately no future-dated check (protocol §4)."""
    return is_stale(signed_at, now, freshness_window_secs, CLOCK_SLACK_SECS)


def is_token_not_yet_valid(issued_at: datetime, now: datetime) -> bool:
    """Tokens get no slack: valid from `issuedAt` inclusive."""
    return now < issued_at


def is_token_expired(expires_at: datetime, now: datetime) -> bool:
    """Tokens get no slack: invalid from `expiresAt` inclusive."""
    return now >= expires_at


def is_token_valid(issued_at: datetime, expires_at: datetime, now: datetime) -> bool:
    """`issuedAt ≤ now < expiresAt`."""
    return not is_token_not_yet_valid(issued_at, now) and not is_token_expired(expires_at, now)
