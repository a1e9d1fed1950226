"""`RateLimitedLog`: one line per kind per period, then the count of what was held back."""

from __future__ import annotations

import logging

import pytest

from nixfleet.cp.ratelog import RateLimitedLog


def test_one_line_per_kind_per_period(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    lines = RateLimitedLog(logging.getLogger("t"), period_secs=60, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(5):
            lines.log(logging.ERROR, "full", "disk full n=%d", 1)
        lines.log(logging.ERROR, "locked", "locked")
        now[0] = 59.9
        assert not lines.log(logging.ERROR, "full", "disk full n=%d", 2)
        now[0] = 60.0
        assert lines.log(logging.ERROR, "full", "disk full n=%d", 3)
    assert caplog.messages == [
        "disk full n=1 suppressed=0",
        "locked suppressed=0",
        "disk full n=3 suppressed=5",
    ]
