"""`nixfleet diagnose`: the cookbook's stuck-agent query with the patterns named."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixfleet.cli.main import main
from nixfleet.cp.store import Store

ROLLOUT = "f" * 64
CLOSURE = "a" * 32 + "-nixos-system-h"


def insert(db: Path, host: str, state: str, deadline: str, confirmed: str | None = None) -> None:
    with Store.open(db) as store:
        store.connection.execute(
            "INSERT INTO pending_confirms (hostname, rollout_id, target_closure_hash, "
            "target_channel_ref, state, confirm_deadline, confirmed_at) "
            "VALUES (?, ?, ?, ?, ?, datetime('now', ?), ?)",
            (host, ROLLOUT, CLOSURE, ROLLOUT, state, deadline, confirmed),
        )


def test_names_each_pattern(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "state.db"
    insert(db, "late", "pending", "-10 minutes")
    insert(db, "loop", "confirmed", "+5 minutes", "2026-05-01T12:00:00Z")
    insert(db, "loop", "pending", "+5 minutes")
    insert(db, "slow", "rolled-back", "-1 minutes")
    expected = {
        "late": "late: pending-past-deadline",
        "loop": "loop: repeated-dispatch",
        "slow": "slow: rolled-back-before-activation",
        "fresh": "fresh: no dispatch rows",
    }
    for host, line in expected.items():
        assert main(["diagnose", host, "--db-path", str(db)]) == 0
        out = capsys.readouterr().out
        assert line in out, out
    assert main(["diagnose", "loop", "--db-path", str(db)]) == 0
    rows = capsys.readouterr().out.splitlines()[:2]
    assert [r.split("|")[:3] for r in rows] == [
        ["3", ROLLOUT, "pending"],
        ["2", ROLLOUT, "confirmed"],
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["diagnose", "h1", "--db-path", "/nonexistent/state.db"], "no state DB at"),
        (["diagnose", "bad host", "--db-path", "x"], "HOST"),
        (["diagnose", "h1", "--limit", "0"], "--limit"),
    ],
)
def test_bad_input_is_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_db_without_the_table_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "other.db"
    db.write_bytes(b"")
    assert main(["diagnose", "h1", "--db-path", str(db)]) == 2
    assert "no such table: pending_confirms" in capsys.readouterr().err
