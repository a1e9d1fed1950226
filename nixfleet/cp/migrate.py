"""Refinery-style schema migrations for the CP state DB (protocol.md §5, decisions.md).

Files are `V<n>__<name>.sql`, shipped as package data in `nixfleet/cp/migrations/`.
Zero padding is ignored: `V001__schema.sql` is version 1, shown as `V1__schema`.
Applied migrations are recorded in `refinery_schema_history(version, name, applied_on,
checksum)`:

- `applied_on` is RFC 3339 UTC text (`format_instant`);
- `checksum` is the lowercase hex SHA-256 of the file's exact bytes (no newline or
  encoding normalisation), so any edit to an applied file is caught.

Start-up first checks every applied version against the files, and only then applies
the pending ones, in version order, each in its own transaction together with its
history row. A divergence leaves the DB untouched and raises:

- `applied migration V1__initial_schema is different than filesystem one V1__initial`
  (`MigrationMismatch`: same version, other name or checksum);
- `migration V<n>__<x> is missing from the filesystem` (`MigrationMissing`).

A DB with tables but no history table is not the CP's (another program's, or a schema
from before migrations): it is refused untouched (`ForeignSchema`).

The message is exactly that one line; the way out (seed 000: wipe the DB, seed 001's
procedure) is carried separately in `.hint` so the first line stays greppable.
Migration files must not contain transaction control (BEGIN/COMMIT): the runner wraps
each file in its own transaction.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from nixfleet.core.errors import NixfleetError
from nixfleet.core.timeutil import format_instant

HISTORY_TABLE = "refinery_schema_history"
MIGRATIONS_PACKAGE = "nixfleet.cp"
MIGRATIONS_DIR = "migrations"

WIPE_HINT = (
    "hint: stop the CP, delete state.db, state.db-wal and state.db-shm, "
    "start it again (disaster-recovery runbook)"
)

_FILENAME = re.compile(r"^V(\d+)__(\w+)\.sql$")

_CREATE_HISTORY = f"""
CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (
    version    INTEGER PRIMARY KEY,
    name       TEXT,
    applied_on TEXT,
    checksum   TEXT
)
"""


class MigrationError(NixfleetError):
    """The schema cannot be brought up to date; the CP must not start."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = WIPE_HINT) -> None:
        super().__init__(message)
        self.hint = hint


class MigrationMismatch(MigrationError):
    """An applied version whose file now has another name or checksum."""

    def __init__(self, applied: str, filesystem: str) -> None:
        super().__init__(
            f"applied migration {applied} is different than filesystem one {filesystem}"
        )
        self.applied = applied
        self.filesystem = filesystem


class MigrationMissing(MigrationError):
    """An applied version with no file."""

    def __init__(self, applied: str) -> None:
        super().__init__(f"migration {applied} is missing from the filesystem")
        self.applied = applied


FOREIGN_HINT = (
    "hint: check --db-path; if it names the CP's own state.db, wipe it "
    "(disaster-recovery runbook), else point it at the CP's database"
)


class ForeignSchema(MigrationError):
    """A non-empty DB without a migration history: another program's, or not ours."""

    def __init__(self, tables: Sequence[str]) -> None:
        shown = ", ".join(tables[:5]) + (", …" if len(tables) > 5 else "")
        super().__init__(
            f"state DB holds tables of another schema ({shown}) and no {HISTORY_TABLE}: "
            "not a nixfleet control plane database",
            hint=FOREIGN_HINT,
        )
        self.tables = tuple(tables)


class MigrationLayoutError(MigrationError):
    """The shipped files themselves are inconsistent (a packaging bug)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, hint=None)


class MigrationFailed(MigrationError):
    """A migration's SQL failed; its transaction was rolled back."""

    def __init__(self, label: str, reason: str) -> None:
        super().__init__(f"migration {label} failed: {reason}", hint=None)
        self.label = label


@dataclass(frozen=True, slots=True)
class Migration:
    """One `V<n>__<name>.sql` file."""

    version: int
    name: str
    sql: str
    checksum: str

    @property
    def label(self) -> str:
        return f"V{self.version}__{self.name}"


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    """One row of `refinery_schema_history`."""

    version: int
    name: str
    applied_on: str
    checksum: str

    @property
    def label(self) -> str:
        return f"V{self.version}__{self.name}"


def checksum(data: bytes) -> str:
    """Lowercase hex SHA-256 of a migration file's exact bytes."""
    return hashlib.sha256(data).hexdigest()


def parse_filename(filename: str) -> tuple[int, str] | None:
    """`V001__schema.sql` → (1, "schema"); None for files that are not migrations."""
    m = _FILENAME.match(filename)
    if m is None:
        return None
    return int(m.group(1)), m.group(2)


def migration_from_bytes(filename: str, data: bytes) -> Migration:
    parsed = parse_filename(filename)
    if parsed is None:
        raise MigrationLayoutError(f"{filename}: not a V<n>__<name>.sql migration file name")
    version, name = parsed
    try:
        sql = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MigrationLayoutError(f"{filename}: not UTF-8 ({exc})") from exc
    return Migration(version=version, name=name, sql=sql, checksum=checksum(data))


def _sorted_unique(migrations: Iterable[Migration]) -> tuple[Migration, ...]:
    by_version: dict[int, Migration] = {}
    for mig in migrations:
        other = by_version.get(mig.version)
        if other is not None:
            raise MigrationLayoutError(
                f"migrations {other.label} and {mig.label} share version {mig.version}"
            )
        by_version[mig.version] = mig
    return tuple(by_version[v] for v in sorted(by_version))


def load_migrations(directory: Traversable | Path | None = None) -> tuple[Migration, ...]:
    """The migration files of `directory` (default: the shipped package data), in
    version order. Other files are ignored; two files with one version are an error."""
    root: Traversable | Path = (
        directory
        if directory is not None
        else resources.files(MIGRATIONS_PACKAGE).joinpath(MIGRATIONS_DIR)
    )
    found = [
        migration_from_bytes(entry.name, entry.read_bytes())
        for entry in root.iterdir()
        if entry.is_file() and parse_filename(entry.name) is not None
    ]
    return _sorted_unique(found)


def _history_exists(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (HISTORY_TABLE,)
    ).fetchone()
    return row is not None


def foreign_tables(conn: sqlite3.Connection) -> list[str]:
    """The tables of a DB with no migration history (none: an empty, new DB)."""
    if _history_exists(conn):
        return []
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name"
    ).fetchall()
    return [str(r[0]) for r in rows]


def applied_migrations(conn: sqlite3.Connection) -> tuple[AppliedMigration, ...]:
    """The history rows in version order (empty when the table does not exist yet)."""
    if not _history_exists(conn):
        return ()
    rows = conn.execute(
        f"SELECT version, name, applied_on, checksum FROM {HISTORY_TABLE} ORDER BY version"
    ).fetchall()
    return tuple(
        AppliedMigration(
            version=int(r[0]), name=str(r[1]), applied_on=str(r[2]), checksum=str(r[3])
        )
        for r in rows
    )


def pending_migrations(
    applied: Sequence[AppliedMigration], migrations: Sequence[Migration]
) -> list[Migration]:
    """Check every applied version against the files; return the ones still to apply.

    Raises MigrationMismatch / MigrationMissing on divergence, and MigrationLayoutError
    for a new file older than the newest applied version (it would run out of order).
    """
    files = {m.version: m for m in migrations}
    for done in applied:
        mig = files.get(done.version)
        if mig is None:
            raise MigrationMissing(done.label)
        if mig.name != done.name or mig.checksum != done.checksum:
            raise MigrationMismatch(done.label, mig.label)
    applied_versions = {a.version for a in applied}
    newest = max(applied, key=lambda a: a.version, default=None)
    pending = [m for m in _sorted_unique(migrations) if m.version not in applied_versions]
    if newest is not None and pending and pending[0].version < newest.version:
        raise MigrationLayoutError(
            f"migration {pending[0].label} is not applied but the later "
            f"{newest.label} already is"
        )
    return pending


def migrate(
    conn: sqlite3.Connection,
    migrations: Sequence[Migration] | None = None,
    *,
    now: datetime | None = None,
) -> list[Migration]:
    """Bring the schema up to date; return the migrations applied (empty: a no-op).

    Nothing is written before every applied version has been checked, so a divergent
    DB is left exactly as it was (apart from creating an absent history table).
    """
    mig_list = tuple(migrations) if migrations is not None else load_migrations()
    saved_isolation = conn.isolation_level
    conn.isolation_level = None  # explicit transactions only
    try:
        if conn.in_transaction:
            raise MigrationLayoutError("migrate() needs a connection with no open transaction")
        foreign = foreign_tables(conn)
        if foreign:  # never write our schema into a DB we did not create
            raise ForeignSchema(foreign)
        pending = pending_migrations(applied_migrations(conn), mig_list)
        if not pending:
            return []
        conn.execute(_CREATE_HISTORY)
        for mig in pending:
            _apply_one(conn, mig, now or datetime.now(UTC))
        return pending
    finally:
        conn.isolation_level = saved_isolation


def _apply_one(conn: sqlite3.Connection, mig: Migration, now: datetime) -> None:
    """The file's SQL and its history row, in one transaction."""
    try:
        # executescript() runs the whole file; the BEGIN keeps the transaction open
        # afterwards so the history row commits (or rolls back) with the schema change.
        conn.executescript("BEGIN IMMEDIATE;\n" + mig.sql)
        if not conn.in_transaction:
            raise sqlite3.OperationalError("the migration ended its own transaction")
        conn.execute(
            f"INSERT INTO {HISTORY_TABLE} (version, name, applied_on, checksum) "
            "VALUES (?, ?, ?, ?)",
            (mig.version, mig.name, format_instant(now), mig.checksum),
        )
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise MigrationFailed(mig.label, str(exc)) from exc
