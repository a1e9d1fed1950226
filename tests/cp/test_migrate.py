"""Refinery-style migrations of the CP state DB (protocol.md §5, decisions.md, seed 000)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from nixfleet.core.errors import NixfleetError
from nixfleet.cp import migrate as mig
from nixfleet.cp.migrate import (
    WIPE_HINT,
    MigrationFailed,
    MigrationLayoutError,
    MigrationMismatch,
    MigrationMissing,
    applied_migrations,
    load_migrations,
    migrate,
)
from nixfleet.cp.store import Store

PACKAGED = Path(mig.__file__).parent / "migrations"

SEED_000_MESSAGE = (
    "applied migration V1__initial_schema is different than filesystem one V1__initial"
)

V01_SCHEMA = """
-- What a v0.1 CP created (seed 000): another file name for version 1.
CREATE TABLE pending_confirms (id INTEGER PRIMARY KEY, hostname TEXT, state TEXT);
"""


def _dump(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def _migrations_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    d = tmp_path / "migrations"
    d.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (d / name).write_text(sql)
    return d


def _migrate_file(db: Path, directory: Path) -> list[mig.Migration]:
    conn = sqlite3.connect(db)
    try:
        return migrate(conn, load_migrations(directory))
    finally:
        conn.close()


def _packaged_v1() -> str:
    return (PACKAGED / "V1__initial.sql").read_text()


# --- discovery ------------------------------------------------------------------------


def test_packaged_migrations_start_with_v1_initial() -> None:
    found = load_migrations()
    assert found[0].label == "V1__initial"
    assert [m.version for m in found] == sorted(m.version for m in found)
    raw = (PACKAGED / "V1__initial.sql").read_bytes()
    assert found[0].checksum == hashlib.sha256(raw).hexdigest()


def test_padding_is_ignored(tmp_path: Path) -> None:
    d = _migrations_dir(
        tmp_path,
        {
            "V001__schema.sql": "CREATE TABLE a (x);",
            "V010__later.sql": "CREATE TABLE b (x);",
            "V2__middle.sql": "CREATE TABLE c (x);",
            "README.md": "not a migration",
        },
    )
    assert [m.label for m in load_migrations(d)] == ["V1__schema", "V2__middle", "V10__later"]


def test_two_files_with_one_version_are_refused(tmp_path: Path) -> None:
    d = _migrations_dir(tmp_path, {"V1__a.sql": "SELECT 1;", "V001__b.sql": "SELECT 1;"})
    with pytest.raises(MigrationLayoutError, match="share version 1"):
        load_migrations(d)


# --- applying ---------------------------------------------------------------------------


def test_fresh_db_records_v1_initial(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with Store.open(db) as store:
        rows = applied_migrations(store.connection)
    first = rows[0]
    assert (first.version, first.name) == (1, "initial")
    assert first.label == "V1__initial"
    assert first.checksum == hashlib.sha256((PACKAGED / "V1__initial.sql").read_bytes()).hexdigest()
    assert first.applied_on.endswith("Z") and "T" in first.applied_on
    tables = {
        r[0]
        for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='table'")
    }
    assert {
        "refinery_schema_history",
        "pending_confirms",
        "cert_revocations",
        "token_replay",
        "rollouts",
        "host_rollout_state",
        "host_reports",
        "quarantined_closures",
    } <= tables


def test_history_table_has_the_refinery_columns(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    Store.open(db).close()
    cols = [r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(refinery_schema_history)")]
    assert cols == ["version", "name", "applied_on", "checksum"]


def test_reopening_is_a_no_op(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    Store.open(db).close()
    before = _dump(db)
    with Store.open(db) as store:
        assert migrate(store.connection) == []
    assert _dump(db) == before


def test_pending_migrations_apply_in_order_each_with_its_history_row(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    d = _migrations_dir(tmp_path, {"V1__initial.sql": _packaged_v1()})
    assert [m.label for m in _migrate_file(db, d)] == ["V1__initial"]
    (d / "V3__third.sql").write_text("ALTER TABLE rollouts ADD COLUMN note3 TEXT;")
    (d / "V2__second.sql").write_text("ALTER TABLE rollouts ADD COLUMN note2 TEXT;")
    assert [m.label for m in _migrate_file(db, d)] == ["V2__second", "V3__third"]
    conn = sqlite3.connect(db)
    assert [r.label for r in applied_migrations(conn)] == ["V1__initial", "V2__second", "V3__third"]
    cols = [r[1] for r in conn.execute("PRAGMA table_info(rollouts)")]
    assert cols[-2:] == ["note2", "note3"]


def test_a_failing_migration_rolls_back_with_its_history_row(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    d = _migrations_dir(
        tmp_path,
        {
            "V1__one.sql": "CREATE TABLE one (x);",
            "V2__two.sql": "CREATE TABLE two (x);\nCREATE TABLE broken (;",
        },
    )
    with pytest.raises(MigrationFailed, match="V2__two"):
        _migrate_file(db, d)
    conn = sqlite3.connect(db)
    assert [r.label for r in applied_migrations(conn)] == ["V1__one"]
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "one" in names and "two" not in names


def test_a_new_file_older_than_the_newest_applied_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    d = _migrations_dir(tmp_path, {"V1__one.sql": "CREATE TABLE one (x);",
                                   "V3__three.sql": "CREATE TABLE three (x);"})
    _migrate_file(db, d)
    (d / "V2__two.sql").write_text("CREATE TABLE two (x);")
    before = _dump(db)
    with pytest.raises(MigrationLayoutError, match="V2__two"):
        _migrate_file(db, d)
    assert _dump(db) == before


# --- divergence (seed 000) ----------------------------------------------------------------


def _seed_000_db(tmp_path: Path) -> Path:
    """A DB a v0.1 CP initialised: version 1 recorded as `initial_schema`."""
    db = tmp_path / "state.db"
    old = _migrations_dir(tmp_path / "old", {"V1__initial_schema.sql": V01_SCHEMA})
    _migrate_file(db, old)
    return db


def test_renamed_v1_stops_start_up_with_the_exact_seed_message(tmp_path: Path) -> None:
    db = _seed_000_db(tmp_path)
    before = _dump(db)
    with pytest.raises(MigrationMismatch) as info:
        Store.open(db)
    err = info.value
    assert str(err) == SEED_000_MESSAGE
    assert err.message == SEED_000_MESSAGE
    assert "\n" not in str(err)
    assert isinstance(err, NixfleetError) and err.exit_code != 0
    assert err.hint == WIPE_HINT
    for part in ("state.db", "state.db-wal", "state.db-shm"):
        assert part in err.hint
    assert (err.applied, err.filesystem) == ("V1__initial_schema", "V1__initial")
    assert _dump(db) == before, "a refused start-up must not touch the DB"


def test_the_seed_001_wipe_fixes_the_mismatch(tmp_path: Path) -> None:
    db = _seed_000_db(tmp_path)
    with pytest.raises(MigrationMismatch):
        Store.open(db)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with Store.open(db) as store:
        assert applied_migrations(store.connection)[0].label == "V1__initial"


def test_changed_checksum_is_a_mismatch(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    edited = _migrations_dir(tmp_path, {"V1__initial.sql": _packaged_v1() + "\n-- edited\n"})
    _migrate_file(db, edited)
    before = _dump(db)
    with pytest.raises(MigrationMismatch) as info:
        Store.open(db)
    assert str(info.value) == (
        "applied migration V1__initial is different than filesystem one V1__initial"
    )
    assert _dump(db) == before


def test_applied_version_without_a_file_is_missing(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    d = _migrations_dir(
        tmp_path,
        {"V1__initial.sql": _packaged_v1(), "V2__extra.sql": "CREATE TABLE extra (x);"},
    )
    _migrate_file(db, d)
    before = _dump(db)
    with pytest.raises(MigrationMissing) as info:
        Store.open(db)
    assert str(info.value) == "migration V2__extra is missing from the filesystem"
    assert info.value.hint == WIPE_HINT
    assert _dump(db) == before
