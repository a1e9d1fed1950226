"""A non-empty DB with no migration history is not the CP's: start-up refuses it
(catalogue `dr-fail-cp-refuses-start`: a foreign schema in a non-empty DB), the DB
left exactly as it was."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from fleet_sim.fleetgen import ReleaseKit
from nixfleet.cp.main import main
from nixfleet.cp.migrate import ForeignSchema
from nixfleet.cp.store import Store

FOREIGN = (
    "CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT); "
    "INSERT INTO accounts VALUES (1, 'a');"
)


def _foreign_db(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        conn.executescript(FOREIGN)
    finally:
        conn.close()
    return _dump(path)


def _dump(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def test_foreign_tables_without_history_are_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    before = _foreign_db(db)
    with pytest.raises(ForeignSchema, match="accounts") as refused:
        Store.open(db)
    assert "refinery_schema_history" in str(refused.value)
    assert _dump(db) == before


def test_empty_db_file_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    sqlite3.connect(db).close()  # an empty file, as `touch` or a first open leaves it
    Store.open(db).close()


def test_serve_exits_with_one_line_naming_the_db(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "state.db"
    _foreign_db(db)
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps(ReleaseKit().trust()))
    argv = ["serve", "--db-path", str(db), "--trust-file", str(trust)]
    argv += ["--listen", "127.0.0.1:0", "--agent-cn-suffix", "fleet.test"]
    status = main(argv)
    err = capsys.readouterr().err
    assert status != 0
    assert "Traceback" not in err
    assert "another schema" in err, err
