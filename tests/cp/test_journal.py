"""The operator journal (`nixfleet.cp.journal`) on real files and a real SQLite DB: what
the process tests in test_cp_journal.py cannot reach cheaply (sidecar rows, retention,
un-revoke folding, the sync's change detection)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nixfleet.core.sidecars import Revocation
from nixfleet.core.timeutil import format_instant
from nixfleet.cp.journal import JournalFile, OperatorJournal
from nixfleet.cp.store import Store

T0 = datetime(2026, 11, 23, 11, 38, 46, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "state.db") as s:
        yield s


def entries(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sync_journals_new_changed_and_deleted_operator_rows_only(
    tmp_path: Path, store: Store
) -> None:
    path = tmp_path / "j.jsonl"
    journal = OperatorJournal.open(path, store, now=T0)
    store.revoke("a", T0, now=T0, reason="compromised", revoked_by="me")
    store.replace_sidecar_revocations([Revocation(hostname="s", not_before=T0)], now=T0)
    journal.sync(now=T0)
    journal.sync(now=T0)  # nothing new: nothing written
    assert [(e["kind"], e["hostname"]) for e in entries(path)] == [("revoke", "a")]

    store.revoke("a", T0 + timedelta(hours=1), now=T0, reason="again")
    store.unrevoke("a")
    store.revoke("b", T0, now=T0)
    journal.sync(now=T0)
    assert [(e["kind"], e["hostname"]) for e in entries(path)][1:] == [
        ("revoke", "b"),
        ("unrevoke", "a"),
    ]


def test_replay_is_idempotent_and_respects_undo_and_retention(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Store.open(tmp_path / "one.db") as first:
        journal = OperatorJournal.open(path, first, now=T0)
        first.revoke("a", T0, now=T0)
        first.revoke("b", T0, now=T0)
        journal.sync(now=T0)
        first.unrevoke("b")
        journal.sync(now=T0)
        journal.nonce_spent("old", "h", now=T0 - timedelta(hours=25))
        journal.nonce_spent("new", "h", now=T0 - timedelta(hours=1))
    with Store.open(tmp_path / "wiped.db") as fresh:
        OperatorJournal.open(path, fresh, now=T0)
        assert [r.hostname for r in fresh.revocations()] == ["a"]
        assert fresh.nonce_used("new") and not fresh.nonce_used("old")
        size = path.stat().st_size
        OperatorJournal.open(path, fresh, now=T0)  # again: nothing restored, nothing written
        assert path.stat().st_size == size


def test_replay_takes_over_a_sidecar_row_keeping_the_later_cut(
    tmp_path: Path, store: Store
) -> None:
    later = T0 + timedelta(days=1)
    store.replace_sidecar_revocations([Revocation(hostname="a", not_before=later)], now=T0)
    JournalFile(tmp_path / "j.jsonl").append(
        [
            {
                "v": 1,
                "kind": "revoke",
                "hostname": "a",
                "not_before": format_instant(T0),
                "reason": "compromised",
                "revoked_by": "me",
                "revoked_at": format_instant(T0),
            }
        ]
    )
    OperatorJournal.open(tmp_path / "j.jsonl", store, now=T0)
    row = store.revocation("a")
    assert row is not None
    assert (row.source, row.reason, row.not_before) == ("operator", "compromised", later)
