"""`nixfleet db tables|rows`: the CP's state DB read through sqlite-utils, read-only;
every problem one line and exit 2. The DB is a real one: the CP's own migrations."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from nixfleet.cli.main import main
from nixfleet.cp.store import Store


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    Store.open(path).close()
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO cert_revocations (hostname, not_before, revoked_at) VALUES (?, ?, ?)",
        [("web-1", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
         ("web-2", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z")],
    )  # fmt: skip
    conn.commit()
    conn.close()
    return path


def test_tables_with_counts(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "tables", "--db-path", str(db), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["cert_revocations"] == 2
    assert "pending_confirms" in counts


def test_rows_where(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["db", "rows", "cert_revocations", "--where", "hostname = 'web-2'", "--json"]
    assert main([*argv, "--db-path", str(db)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["hostname"] for r in rows] == ["web-2"]
    assert main(["db", "rows", "cert_revocations", "--db-path", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t")[0] == "hostname" and len(lines) == 3


def test_read_only(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = db.read_bytes()
    where = "hostname IN (SELECT hostname FROM cert_revocations); DELETE FROM cert_revocations"
    assert main(["db", "rows", "cert_revocations", "--where", where, "--db-path", str(db)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert db.read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["rows", "nope"], "nixfleet: db: no table 'nope' (tables: "),
        (["rows", "cert_revocations", "--where", "bogus("], "nixfleet: db: "),
        (["rows", "cert_revocations", "--limit", "0"], "nixfleet: db: --limit must be ≥ 1"),
    ],
)
def test_bad_input_is_one_line(
    db: Path, capsys: pytest.CaptureFixture[str], argv: list[str], problem: str
) -> None:
    assert main(["db", *argv, "--db-path", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(problem) and err.count("\n") == 1


def test_no_db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "tables", "--db-path", str(tmp_path / "none.db")]) == 2
    assert "no state DB at" in capsys.readouterr().err
