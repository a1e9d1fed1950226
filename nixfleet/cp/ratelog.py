"""Log lines that would repeat per request or per tick, at most once a minute per kind.

A full disk or a flooding peer fails the same way thousands of times; the journal
gets one line per kind per period, and the next line that gets through says how many
were held back (`suppressed=N`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

DEFAULT_PERIOD_SECS = 60.0
MAX_KINDS = 1024
"""Kinds are bounded (e.g. one per peer address): past this, expired ones are forgotten."""


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        *,
        period_secs: float = DEFAULT_PERIOD_SECS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._period = period_secs
        self._clock = clock
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, kind: str, msg: str, *args: object) -> bool:
        """Log `msg % args` + ` suppressed=N` unless `kind` was logged within the period."""
        now = self._clock()
        if kind in self._next and now < self._next[kind]:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        if len(self._next) >= MAX_KINDS:
            self._forget_expired(now)
        self._next[kind] = now + self._period
        self._logger.log(level, msg + " suppressed=%d", *args, self._suppressed.pop(kind, 0))
        return True

    def _forget_expired(self, now: float) -> None:
        for kind in [k for k, until in self._next.items() if until <= now]:
            del self._next[kind]
            self._suppressed.pop(kind, None)
