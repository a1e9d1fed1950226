"""`nixfleet diagnose HOST [--db-path P] [--limit N]`: the CP half of seed 002's
"Diagnose a stuck agent", with the patterns named.

Run on the CP host. Reads the state DB read-only, prints the recipe's query (a host's
newest `pending_confirms` rows: id, rollout, state, dispatched, confirmed) and then
each pattern the recipe says to look for that those rows show (nixfleet.core.stuck),
or that they show none. The host half (unit state, agent log, current-system) stays
the recipe's ssh commands.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nixfleet.core.errors import BadInput, ParseError
from nixfleet.core.idents import HOSTNAME
from nixfleet.core.stuck import DEFAULT_GRACE, DispatchRow, classify
from nixfleet.core.timeutil import parse_instant
from nixfleet.cp.config import DEFAULT_DB, ENV_PREFIX

from .envflags import add_env_flag

COMMAND = "diagnose"
RECIPE_LIMIT = 5
"""The recipe's `LIMIT 5`."""
QUERY = (
    "SELECT id, rollout_id, target_closure_hash, state, terminal_state, dispatched_at, "
    "confirm_deadline, confirmed_at, datetime(dispatched_at), datetime(confirmed_at) "
    "FROM pending_confirms WHERE hostname = ? ORDER BY id DESC LIMIT ?"
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        COMMAND,
        help="name why a host looks stuck, from the CP's dispatch rows (seed 002 recipe)",
        description=(
            "Print HOST's newest pending_confirms rows as the cookbook's query does, then "
            "the stuck patterns they show: pending past the deadline, the same target "
            "re-dispatched, rolled back before activation finished."
        ),
    )
    p.add_argument("host", metavar="HOST", help="the host name")
    p.add_argument(
        "--limit", type=int, default=RECIPE_LIMIT, help=f"rows to read (default {RECIPE_LIMIT})"
    )
    p.add_argument(
        "--grace-secs",
        type=int,
        default=int(DEFAULT_GRACE.total_seconds()),
        help="how long past its deadline a pending row is normal (default %(default)s)",
    )
    add_env_flag(
        p, "--db-path", prefix=ENV_PREFIX, type=Path, default=Path(DEFAULT_DB), help="state DB"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    host = HOSTNAME.check(args.host, source=COMMAND, field="HOST")
    if args.limit < 1 or args.grace_secs < 0:
        raise BadInput(f"{COMMAND}: --limit must be ≥ 1 and --grace-secs ≥ 0")
    db: Path = args.db_path
    if not db.is_file():
        raise BadInput(f"{COMMAND}: no state DB at {db} (run it on the CP host, or --db-path)")
    raw = read_rows(db, host, args.limit)
    out = sys.stdout
    for r in raw:  # the recipe's columns, as sqlite3 prints them
        out.write("|".join("" if v is None else str(v) for v in (r[0], r[1], r[3], r[8], r[9])))
        out.write("\n")
    rows = [dispatch_row(r) for r in raw]
    findings = classify(rows, datetime.now(UTC), grace=timedelta(seconds=args.grace_secs))
    for f in findings:
        out.write(f.line(host) + "\n")
    if not raw:
        out.write(f"{host}: no dispatch rows (the CP never dispatched to it)\n")
    elif not findings:
        out.write(f"{host}: no stuck pattern in the newest {len(raw)} rows ({raw[0][3]})\n")
    return 0


def read_rows(db: Path, host: str, limit: int) -> list[tuple[Any, ...]]:
    try:
        conn = sqlite3.connect(f"file:{quote(str(db.resolve()))}?mode=ro", uri=True, timeout=5)
        try:
            return list(conn.execute(QUERY, (host, limit)).fetchall())
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BadInput(f"{COMMAND}: state DB {db}: {exc}") from exc


def dispatch_row(r: tuple[Any, ...]) -> DispatchRow:
    return DispatchRow(
        id=int(r[0]),
        rollout_id=str(r[1]),
        target_closure_hash=str(r[2]),
        state=str(r[3]),
        terminal_state=None if r[4] is None else str(r[4]),
        dispatched_at=_instant(r[5]),
        confirm_deadline=_instant(r[6]),
        confirmed_at=_instant(r[7]),
    )


def _instant(value: object) -> datetime | None:
    """A stored instant, RFC 3339 or SQLite's text; None when NULL or unreadable."""
    if value is None:
        return None
    try:
        return parse_instant(str(value))
    except ParseError:
        return None
