"""Plain-text logs: one line per event, a stable prefix, then key=value details.

Operators grep these lines (seed 001: `grep 'checkin received' | awk '{print $NF}'`),
so the format is fixed: `<RFC 3339 UTC> <LEVEL> <logger>: <message>`.
"""

from __future__ import annotations

import logging
import sys
import time


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{t}.{int(record.msecs):03d}Z"

    def formatException(self, ei: object) -> str:
        # A traceback means a bug; keep it, but on one line so greps stay line-based.
        return " | ".join(super().formatException(ei).splitlines())  # type: ignore[arg-type]


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UtcFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
