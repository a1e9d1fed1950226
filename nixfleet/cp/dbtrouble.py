"""SQLite failures caused by the machine, not the code: disk full, locked, I/O error.

Such a failure repeats on every request and every tick until the operator acts. Clients
get a 503 with Retry-After (agents retry; nothing half-written was committed, as each
store call is one transaction), the journal gets one ERROR line per kind a minute with
a count of the repeats, and no traceback. Any other SQLite error (bad SQL, a missing
table) is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sqlite3

from aiohttp import web
from aiohttp.typedefs import Handler

from .api import ApiError
from .ratelog import RateLimitedLog

log = logging.getLogger("nixfleet.cp")

RETRY_AFTER_SECS = 30
_MACHINE_CODES = frozenset(
    {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_NOTADB,
    }
)
_lines = RateLimitedLog(log)


def absorbed(exc: BaseException, *, during: str) -> bool:
    """If `exc` is such a failure, log it (rate-limited) and return True."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None or code & 0xFF not in _MACHINE_CODES:
        return False
    name = getattr(exc, "sqlite_errorname", "SQLITE_?")
    _lines.log(
        logging.ERROR,
        name,
        "state db unavailable: %s error=%s during=%s; answering 503 until it clears",
        exc,
        name,
        during,
    )
    return True


@web.middleware
async def db_trouble_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except sqlite3.DatabaseError as exc:
        resource = request.match_info.route.resource
        during = f"{request.method}:{resource.canonical if resource else '?'}"
        if not absorbed(exc, during=during):
            raise
        raise ApiError(
            503, "state db unavailable", str(exc), retry_after=RETRY_AFTER_SECS
        ) from None
