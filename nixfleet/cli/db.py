"""`nixfleet db tables|rows`: read-only inspection of the CP's state DB (sqlite-utils).

    nixfleet db tables [--db-path P] [--json]
    nixfleet db rows TABLE [--where SQL] [--order-by SQL] [--limit N] [--json] [--db-path P]

Run on the CP host, instead of hand-typed `sqlite3` queries: `tables` lists each table
with its row count, `rows` prints a table's rows (`--where` is an SQL condition, e.g.
`hostname = 'web-1' AND state = 'pending'`), tab-separated with a header line, or one
JSON array. The DB is opened read-only (`mode=ro`, `PRAGMA query_only`), so nothing
typed here can change it; every problem is one line and exit 2. Migrations and every
write stay the CP's (nixfleet.cp.store): this is not a second store layer.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlite_utils

from nixfleet.core.errors import BadInput
from nixfleet.cp.config import DEFAULT_DB, ENV_PREFIX

from .envflags import add_env_flag

COMMAND = "db"
DEFAULT_LIMIT = 50


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        COMMAND,
        help="inspect the CP's state DB read-only (tables, rows)",
        description="Read the control plane's state DB without changing it.",
    )
    sub = p.add_subparsers(metavar="ACTION", dest="action", required=True)
    tables = sub.add_parser("tables", help="every table with its row count")
    rows = sub.add_parser("rows", help="a table's rows")
    rows.add_argument("table", metavar="TABLE")
    rows.add_argument("--where", metavar="SQL", help="an SQL condition on the rows")
    rows.add_argument("--order-by", metavar="SQL", help="e.g. 'id DESC' (default: rowid)")
    rows.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help="at most N rows (default %(default)s)"
    )
    for q in (tables, rows):
        q.add_argument("--json", action="store_true", help="one JSON document")
        add_env_flag(
            q, "--db-path", prefix=ENV_PREFIX, type=Path, default=Path(DEFAULT_DB), help="state DB"
        )
    p.set_defaults(func=run)


@contextmanager
def read_only(path: Path) -> Iterator[sqlite_utils.Database]:
    if not path.is_file():
        raise BadInput(f"{COMMAND}: no state DB at {path} (run it on the CP host, or --db-path)")
    try:
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=5)
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        raise BadInput(f"{COMMAND}: state DB {path}: {exc}") from None
    try:
        yield sqlite_utils.Database(conn)
    finally:
        conn.close()


def run(args: argparse.Namespace) -> int:
    with read_only(args.db_path) as db:
        try:
            if args.action == "tables":
                return _tables(db, args.json)
            return _rows(db, args)
        except sqlite3.Error as exc:
            raise BadInput(f"{COMMAND}: {exc}") from None


def _tables(db: sqlite_utils.Database, as_json: bool) -> int:
    counts = {name: db.table(name).count for name in db.table_names()}
    if as_json:
        print(json.dumps(counts, indent=2))
    else:
        for name, n in counts.items():
            print(f"{name}\t{n}")
    return 0


def _rows(db: sqlite_utils.Database, args: argparse.Namespace) -> int:
    names = db.table_names()
    if args.table not in names:
        raise BadInput(f"{COMMAND}: no table {args.table!r} (tables: {', '.join(names)})")
    if args.limit < 1:
        raise BadInput(f"{COMMAND}: --limit must be ≥ 1")
    table = db.table(args.table)
    rows = list(table.rows_where(args.where, order_by=args.order_by or "rowid", limit=args.limit))
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    columns = [c.name for c in table.columns]
    out = sys.stdout
    out.write("\t".join(columns) + "\n")
    for row in rows:
        out.write("\t".join("" if row[c] is None else str(row[c]) for c in columns) + "\n")
    return 0
