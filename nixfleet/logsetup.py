"""Plain-text logs: one line per event, a stable prefix, then key=value details.

Operators grep these lines (seed 001: `grep 'checkin received' | awk '{print $NF}'`),
so the format is fixed: `<RFC 3339 UTC> <LEVEL> <logger>: <message>`, and a record is
always exactly one line: control characters from any argument are escaped (`\n` →
`\\n`), so no value can forge a line, and a traceback follows on the same line.
"""

from __future__ import annotations

import logging
import sys
import time

from nixfleet.core.idents import escape_controls


class _UtcFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # A traceback means a bug; keep it, but folded onto the record's line (its
        # lines joined by " | ") so greps stay line-based.
        lines = super().format(record).split("\n")
        return " | ".join(escape_controls(line) for line in lines)

    def formatMessage(self, record: logging.LogRecord) -> str:
        # The message's own newlines are escaped, not folded: values cannot add lines.
        return escape_controls(super().formatMessage(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{t}.{int(record.msecs):03d}Z"


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UtcFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
