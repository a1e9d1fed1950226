"""`nixfleet revoke HOST --reason R [--by NAME] [--undo]`: revoke a host's certificates.

Run on the CP host, as the cookbook's sqlite3 recipe is. Does what its
`INSERT INTO cert_revocations … VALUES ('HOST', datetime('now'), R, NAME)` does (every
cert of HOST issued before now gets 401 on every /v1 call, at once) and also appends
the revocation to the operator journal, so seed 001's wipe keeps it even if the CP
never saw the row. `--undo` deletes the operator row and journals that: the way to
un-revoke that survives a wipe whether or not the CP is running.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nixfleet.core.errors import BadInput
from nixfleet.core.idents import HOSTNAME, TEXT
from nixfleet.core.timeutil import format_instant
from nixfleet.cp.config import DEFAULT_DB, ENV_PREFIX, JOURNAL_FILE, beside_db
from nixfleet.cp.journal import JournalFile, Revoked, revoke_entry, unrevoke_entry
from nixfleet.cp.store import Store

from .envflags import add_env_flag

COMMAND = "revoke"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        COMMAND,
        help="revoke a host's certificates (the cookbook's INSERT, kept through the DR wipe)",
        description=(
            "Insert an operator row in cert_revocations (certs of HOST issued before now "
            "are refused) and append it to the operator journal."
        ),
    )
    p.add_argument("host", metavar="HOST", help="the host name (the agent cert's machine id)")
    p.add_argument("--reason", help="why, e.g. compromised (required unless --undo)")
    p.add_argument("--by", metavar="NAME", help="who revokes (default: $SUDO_USER or $USER)")
    p.add_argument("--undo", action="store_true", help="un-revoke: delete the operator row")
    add_env_flag(
        p, "--db-path", prefix=ENV_PREFIX, type=Path, default=Path(DEFAULT_DB), help="state DB"
    )
    add_env_flag(
        p,
        "--operator-journal",
        prefix=ENV_PREFIX,
        help=f"the CP's operator journal (default: {JOURNAL_FILE} beside --db-path)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    host = HOSTNAME.check(args.host, source=COMMAND, field="HOST")
    if args.undo == (args.reason is not None):
        raise BadInput(f"{COMMAND}: give --reason, or --undo without it")
    by = args.by or os.environ.get("SUDO_USER") or getpass.getuser()
    for value, name in ((args.reason, "--reason"), (by, "--by")):
        if value is not None:
            TEXT.check(value, source=COMMAND, field=name)
    db: Path = args.db_path
    if not db.is_file():
        raise BadInput(f"{COMMAND}: no state DB at {db} (run it on the CP host, or --db-path)")
    path = beside_db(args.operator_journal, db, JOURNAL_FILE)
    journal = JournalFile(path) if path is not None else None
    now = datetime.now(UTC)
    try:
        with Store.open(db) as store:
            if args.undo:
                # The row goes first: should the journal fail, the next wipe revokes again.
                deleted = store.unrevoke(host)
                if journal is not None:
                    journal.append([unrevoke_entry(host, at=now)])
                what = "un-revoked" if deleted else "had no operator row; un-revocation recorded"
            else:
                # The journal goes first: should the DB fail, the next CP start revokes.
                stamp = format_instant(now)
                if journal is not None:
                    entry = revoke_entry(host, Revoked(stamp, args.reason, by, stamp), at=now)
                    journal.append([entry])
                store.revoke(host, now, now=now, reason=args.reason, revoked_by=by)
                what = f"revoked (certs issued before {stamp} are refused)"
    except sqlite3.Error as exc:
        raise BadInput(f"{COMMAND}: state DB {db}: {exc}") from exc
    except OSError as exc:
        raise BadInput(f"{COMMAND}: cannot write {path} ({exc.strerror})") from exc
    kept = f"journaled in {path}" if path else "not journaled (--operator-journal none)"
    sys.stdout.write(f"{host}: {what}; {kept}\n")
    return 0
