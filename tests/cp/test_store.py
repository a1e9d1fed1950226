"""The CP state DB (`nixfleet.cp.store`) on real SQLite files.

Covers the seed runbooks run unchanged against it (cookbook revoke INSERT and
stuck-agent SELECT through the `sqlite3` CLI), the seed-000 rollback-timer bug (with a
mutation check proving the sweep test can fail), revocation strictness in both
timestamp forms, the sidecar replay, token replay, retention and kill -9 durability.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nixfleet.core import dispatch as dec
from nixfleet.core import wire
from nixfleet.core.projection import DispatchRow, ParticipationRow, RolloutRow
from nixfleet.core.sidecars import Revocation
from nixfleet.core.timeutil import format_instant, format_sqlite
from nixfleet.cp import store as store_module
from nixfleet.cp.store import KEEP, Store

T0 = datetime(2026, 11, 23, 11, 38, 46, tzinfo=UTC)
CLOSURE_A = "0" * 32 + "-nixos-system-web-26.05"
CLOSURE_B = "1" * 32 + "-nixos-system-web-26.05"
RID = "a" * 64
RID2 = "b" * 64

SQLITE3 = shutil.which("sqlite3") or "/usr/bin/sqlite3"

# Seed 002, verbatim apart from the placeholder names.
COOKBOOK_REVOKE = (
    "INSERT INTO cert_revocations (hostname, not_before, reason, revoked_by)\n"
    "VALUES ('newhost', datetime('now'), 'compromised', 'me');"
)
COOKBOOK_STUCK_AGENT = (
    "SELECT id, rollout_id, state, datetime(dispatched_at), datetime(confirmed_at) "
    'FROM pending_confirms WHERE hostname = "stuckhost" ORDER BY id DESC LIMIT 5;'
)
# The seed-000 bug: a raw text compare of RFC 3339 against SQLite's space form.
RAW_TEXT_SWEEP = "state = 'pending' AND confirm_deadline < datetime('now')"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    s = Store.open(db)
    try:
        yield s
    finally:
        s.close()


def _cli(db: Path, sql: str) -> str:
    if not os.path.exists(SQLITE3):
        pytest.skip("the sqlite3 CLI is not installed")
    done = subprocess.run(
        [SQLITE3, str(db)], input=sql, capture_output=True, text=True, check=False, timeout=30
    )
    assert done.returncode == 0 and not done.stderr, done.stderr
    return done.stdout


def _dispatch(
    store: Store,
    host: str = "web-01",
    *,
    rid: str = RID,
    closure: str = CLOSURE_A,
    at: datetime = T0,
    window: timedelta = timedelta(seconds=360),
    wave: int = 0,
) -> store_module.DispatchRecord:
    return store.insert_dispatch(
        host, rid, wave, closure, rid, dispatched_at=at, deadline=at + window
    )


# --- opening ------------------------------------------------------------------------------


def test_open_sets_wal_full_sync_and_foreign_keys(store: Store, db: Path) -> None:
    conn = store.connection
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    _dispatch(store)
    assert Path(f"{db}-wal").exists() and Path(f"{db}-shm").exists()


def test_memory_store_works() -> None:
    with Store.open(":memory:") as s:
        assert _dispatch(s).state == dec.PENDING


def test_timestamps_are_stored_as_rfc3339z(store: Store) -> None:
    at = T0.replace(microsecond=250000)
    row = _dispatch(store, at=at)
    raw = store.connection.execute(
        "SELECT dispatched_at, confirm_deadline FROM pending_confirms WHERE id = ?", (row.id,)
    ).fetchone()
    assert tuple(raw) == (format_instant(at), format_instant(at + timedelta(seconds=360)))
    assert raw[0].startswith("2026-11-23T11:38:46.25") and raw[0].endswith("Z")


def test_check_constraints_reject_unknown_literals(store: Store) -> None:
    conn = store.connection
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO pending_confirms (hostname, rollout_id, target_closure_hash, "
            "target_channel_ref, state) VALUES ('h', 'r', 'c', 'r', 'bogus')"
        )
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO host_rollout_state (rollout_id, hostname, host_state) "
            "VALUES ('r', 'h', 'Done')"
        )
    with pytest.raises(ValueError):
        store.set_participation(RID, "h", "Done", now=T0)
    with pytest.raises(ValueError):
        store.set_dispatch_state(1, "done", now=T0)


# --- the operator cookbook, unchanged (seed 002) --------------------------------------------


def test_cookbook_stuck_agent_query_runs_unchanged(store: Store, db: Path) -> None:
    # A ghost loop: the same target dispatched and confirmed again and again.
    for i in range(6):
        at = T0 + timedelta(seconds=60 * i, microseconds=123456)
        row = _dispatch(store, "stuckhost", at=at)
        store.mark_confirmed(row.id, now=at + timedelta(seconds=30))
    _dispatch(store, "otherhost")
    assert store.dispatch_count("stuckhost") == 6
    assert store.dispatch_count("stuckhost", rollout_id=RID, closure_hash=CLOSURE_A) == 6

    out = _cli(db, COOKBOOK_STUCK_AGENT).splitlines()
    assert len(out) == 5
    newest = store.latest_dispatch("stuckhost")
    assert newest is not None
    first = out[0].split("|")
    assert first == [
        str(newest.id),
        RID,
        "confirmed",
        format_sqlite(T0 + timedelta(seconds=300)),
        format_sqlite(T0 + timedelta(seconds=330)),
    ]
    assert [int(line.split("|")[0]) for line in out] == sorted(
        (int(line.split("|")[0]) for line in out), reverse=True
    )

    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(COOKBOOK_STUCK_AGENT).fetchall()
    finally:
        conn.close()
    assert ["|".join(str(v) for v in r) for r in rows] == out


def test_cookbook_revoke_insert_runs_unchanged_and_revokes_older_certs(
    store: Store, db: Path
) -> None:
    before = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=2)
    _cli(db, COOKBOOK_REVOKE)
    after = datetime.now(UTC) + timedelta(seconds=2)

    rec = store.revocation("newhost")
    assert rec is not None
    assert (rec.source, rec.reason, rec.revoked_by) == ("operator", "compromised", "me")
    assert " " in rec.not_before_text and "T" not in rec.not_before_text  # SQLite form
    assert rec.not_before is not None and rec.revoked_at is not None

    assert store.is_revoked("newhost", before - timedelta(days=30))  # the old cert
    assert store.is_revoked("newhost", before)
    assert not store.is_revoked("newhost", after)  # re-enrolled after the revocation
    assert not store.is_revoked("otherhost", before)
    # Strict: a cert issued in the very second of the revocation is not older than it.
    assert not store.is_revoked("newhost", rec.not_before)
    assert store.is_revoked("newhost", rec.not_before - timedelta(seconds=1))


def test_cookbook_revoke_through_python_too(store: Store, db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute(COOKBOOK_REVOKE)
        conn.commit()
    finally:
        conn.close()
    now = datetime.now(UTC)
    assert store.is_revoked("newhost", now - timedelta(hours=1))
    assert not store.is_revoked("newhost", now + timedelta(hours=1))


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T11:38:46Z",
        "2026-11-23T11:38:46.000Z",
        "2026-11-23T12:38:46+01:00",
        "2026-11-23 11:38:46",
    ],
)
def test_revocation_not_before_in_both_forms_is_strict(store: Store, text: str) -> None:
    store.connection.execute(
        "INSERT INTO cert_revocations (hostname, not_before) VALUES ('h', ?)", (text,)
    )
    assert store.is_revoked("h", T0 - timedelta(seconds=1))
    assert not store.is_revoked("h", T0)
    assert not store.is_revoked("h", T0 + timedelta(seconds=1))
    assert store.is_revoked("h", (T0 - timedelta(seconds=1)).replace(tzinfo=None))  # naive=UTC


def test_unparseable_not_before_revokes_every_cert(store: Store) -> None:
    store.connection.execute(
        "INSERT INTO cert_revocations (hostname, not_before) VALUES ('h', 'yesterday')"
    )
    assert store.is_revoked("h", T0 + timedelta(days=365))


def test_operator_revoke_method(store: Store) -> None:
    store.revoke("h", T0, now=T0, reason="lost laptop", revoked_by="ops")
    rec = store.revocation("h")
    assert rec is not None and rec.source == "operator" and rec.not_before == T0
    assert store.is_revoked("h", T0 - timedelta(seconds=1))


# --- sidecar replay -----------------------------------------------------------------------


def _rev(host: str, nb: datetime, reason: str = "retired") -> Revocation:
    return Revocation(hostname=host, not_before=nb, reason=reason, revoked_by="ci")


def test_sidecar_replace_leaves_operator_rows_alone(store: Store, db: Path) -> None:
    _cli(db, COOKBOOK_REVOKE)
    operator_before = store.revocation("newhost")

    applied, pruned = store.replace_sidecar_revocations(
        [_rev("a", T0), _rev("b", T0)], now=T0
    )
    assert (applied, pruned) == (2, 0)
    assert {r.hostname: r.source for r in store.revocations()} == {
        "a": "sidecar",
        "b": "sidecar",
        "newhost": "operator",
    }

    applied, pruned = store.replace_sidecar_revocations(
        [_rev("a", T0 + timedelta(hours=1), "rekeyed")], now=T0
    )
    assert (applied, pruned) == (1, 1)
    a = store.revocation("a")
    assert a is not None and a.not_before == T0 + timedelta(hours=1) and a.reason == "rekeyed"
    assert store.revocation("b") is None

    assert store.replace_sidecar_revocations([], now=T0) == (0, 1)
    assert [r.hostname for r in store.revocations()] == ["newhost"]
    assert store.revocation("newhost") == operator_before
    assert store.is_revoked("newhost", datetime.now(UTC) - timedelta(hours=1))


def test_sidecar_entry_for_an_operator_row_only_tightens_it(store: Store) -> None:
    store.revoke("h", T0, now=T0, reason="compromised", revoked_by="me")
    # An older sidecar bound: the operator row stays exactly as it was.
    assert store.replace_sidecar_revocations([_rev("h", T0 - timedelta(days=1))], now=T0) == (
        0,
        0,
    )
    rec = store.revocation("h")
    assert rec is not None and (rec.source, rec.not_before) == ("operator", T0)
    # A later one: the stricter bound wins; the row stays the operator's.
    later = T0 + timedelta(days=1)
    assert store.replace_sidecar_revocations([_rev("h", later)], now=T0) == (1, 0)
    rec = store.revocation("h")
    assert rec is not None
    assert (rec.source, rec.not_before, rec.reason) == ("operator", later, "compromised")
    # Dropping it from the list never deletes an operator row.
    assert store.replace_sidecar_revocations([], now=T0) == (0, 0)
    assert store.revocation("h") is not None


# --- token replay ------------------------------------------------------------------------


def test_token_replay_conflict(store: Store, db: Path) -> None:
    assert not store.nonce_used("n1")
    assert store.record_nonce("n1", "web-01", now=T0)
    assert store.nonce_used("n1")
    assert not store.record_nonce("n1", "web-01", now=T0)  # → 409
    assert not store.record_nonce("n1", "other", now=T0 + timedelta(minutes=1))
    with Store.open(db) as second:  # another connection sees the claim too
        assert not second.record_nonce("n1", "web-01", now=T0)
        assert second.record_nonce("n2", "web-02", now=T0)
    rows = store.connection.execute("SELECT nonce, hostname FROM token_replay ORDER BY 1")
    assert [tuple(r) for r in rows] == [("n1", "web-01"), ("n2", "web-02")]


# --- dispatch rows ---------------------------------------------------------------------


def test_dispatch_rows_newest_is_current(store: Store) -> None:
    first = _dispatch(store)
    assert first.state == dec.PENDING
    assert first.confirm_deadline == T0 + timedelta(seconds=360)
    assert first.confirm_deadline_text == "2026-11-23T11:44:46Z"
    assert store.latest_dispatch("web-01") == first
    assert store.dispatch_for("web-01", RID) == first
    assert store.dispatch_for("web-01", RID2) is None
    assert store.latest_dispatch("nobody") is None

    assert store.mark_rolled_back(first.id, now=T0 + timedelta(minutes=7))
    second = _dispatch(store, rid=RID2, closure=CLOSURE_B, at=T0 + timedelta(minutes=8))
    assert second.id > first.id
    assert store.latest_dispatch("web-01") == second
    assert store.dispatch_for("web-01", RID) == store.dispatch(first.id)
    assert [d.id for d in store.dispatch_history("web-01")] == [second.id, first.id]
    assert store.dispatch_count("web-01") == 2
    assert store.dispatch_count("web-01", rollout_id=RID2) == 1

    old = store.dispatch(first.id)
    assert old is not None
    assert (old.state, old.terminal_state) == ("rolled-back", "rolled-back")
    assert old.terminal_at == T0 + timedelta(minutes=7)

    assert store.latest_dispatch_rows() == [
        DispatchRow(
            hostname="web-01", rollout_id=RID2, state="pending", target_closure_hash=CLOSURE_B
        )
    ]
    op = second.as_op_row()
    assert (op.rollout_id, op.state, op.target_closure_hash, op.wave) == (
        RID2,
        "pending",
        CLOSURE_B,
        0,
    )


def test_new_dispatch_cancels_the_hosts_open_rows(store: Store) -> None:
    a = _dispatch(store)
    store.mark_deferred(a.id, now=T0)
    b = _dispatch(store, closure=CLOSURE_B, at=T0 + timedelta(minutes=1))
    old = store.dispatch(a.id)
    assert old is not None and (old.state, old.terminal_state) == ("cancelled", "cancelled")
    assert store.latest_dispatch("web-01") == b


def test_state_marks(store: Store) -> None:
    row = _dispatch(store)
    later = T0 + timedelta(seconds=90)
    assert store.mark_deferred(row.id, now=later)
    d = store.dispatch(row.id)
    assert d is not None and d.state == dec.DEFERRED
    assert store.mark_confirmed(row.id, now=later)
    d = store.dispatch(row.id)
    assert d is not None and (d.state, d.confirmed_at) == ("confirmed", later)
    assert store.mark_cancelled(row.id, now=later)
    d = store.dispatch(row.id)
    assert d is not None and (d.state, d.terminal_state) == ("cancelled", "cancelled")
    assert not store.mark_confirmed(9999, now=later)


def test_confirm_dispatch_is_h2_atomically(store: Store) -> None:
    row = _dispatch(store)
    at = T0 + timedelta(seconds=100)
    done = store.confirm_dispatch(row.id, now=at)
    assert done is not None and (done.state, done.confirmed_at) == ("confirmed", at)
    assert store.participation(RID, "web-01") == ParticipationRow(
        rollout_id=RID, hostname="web-01", host_state="Healthy", last_healthy_since=at
    )
    assert store.confirm_dispatch(9999, now=at) is None


def test_revive_rolled_back_row_h6(store: Store) -> None:
    row = _dispatch(store)
    expired = store.sweep_expired(now=T0 + timedelta(minutes=10))
    assert [d.id for d in expired] == [row.id]
    at = T0 + timedelta(minutes=11)
    revived = store.revive_confirmed(row.id, now=at)
    assert revived is not None
    assert (revived.state, revived.terminal_state, revived.terminal_at) == ("confirmed", None, None)
    part = store.participation(RID, "web-01")
    assert part is not None and (part.host_state, part.last_healthy_since) == ("Healthy", at)
    assert store.dispatch_count("web-01") == 1


def test_confirm_attested_orphan_recovery_after_a_wipe(store: Store) -> None:
    since = T0 - timedelta(hours=5)
    row = store.confirm_attested("web-01", RID, 2, CLOSURE_A, healthy_since=since, now=T0)
    assert (row.state, row.wave, row.rollout_id, row.target_closure_hash) == (
        "confirmed",
        2,
        RID,
        CLOSURE_A,
    )
    part = store.participation(RID, "web-01")
    assert part is not None and (part.host_state, part.last_healthy_since) == ("Healthy", since)
    # A future attested instant is clamped to now.
    store.confirm_attested("web-01", RID, 2, CLOSURE_A, healthy_since=T0 + timedelta(days=1),
                           now=T0)
    part = store.participation(RID, "web-01")
    assert part is not None and part.last_healthy_since == T0
    assert store.dispatch_count("web-01") == 1  # the same row, confirmed again


def test_confirm_attested_reuses_a_rolled_back_row(store: Store) -> None:
    row = _dispatch(store)
    store.mark_rolled_back(row.id, now=T0 + timedelta(minutes=6))
    got = store.confirm_attested("web-01", RID, 1, CLOSURE_A, healthy_since=T0, now=T0)
    assert got.id == row.id and got.state == "confirmed" and got.wave == 1
    assert got.terminal_state is None


def test_record_converged_at_dispatch_h10(store: Store) -> None:
    assert store.record_converged_at_dispatch("web-01", RID, 0, CLOSURE_A, now=T0)
    row = store.latest_dispatch("web-01")
    assert row is not None
    assert (row.state, row.terminal_state) == ("confirmed", "converged-at-dispatch")
    part = store.participation(RID, "web-01")
    assert part is not None and part.host_state == "Converged"
    # Only once: a participation row exists now.
    assert not store.record_converged_at_dispatch("web-01", RID, 0, CLOSURE_A, now=T0)
    assert store.dispatch_count("web-01") == 1


def test_cancel_open_dispatches_for_a_quarantined_closure(store: Store) -> None:
    a = _dispatch(store, "web-01")
    b = _dispatch(store, "web-02")
    store.mark_deferred(b.id, now=T0)
    c = _dispatch(store, "web-03", closure=CLOSURE_B)
    assert store.cancel_open_dispatches(CLOSURE_A, now=T0) == 2
    states = {d.hostname: d.state for d in store.latest_dispatches()}
    assert states == {"web-01": "cancelled", "web-02": "cancelled", "web-03": "pending"}
    assert a.id != c.id


# --- rollback sweep (H5, seed 000) --------------------------------------------------------


def _wall_clock_same_day() -> datetime:
    """Now, at least 61 s after UTC midnight, so now − 60 s is on the same UTC date."""
    now = datetime.now(UTC)
    since_midnight = now - now.replace(hour=0, minute=0, second=0, microsecond=0)
    if since_midnight < timedelta(seconds=61):
        time.sleep((timedelta(seconds=62) - since_midnight).total_seconds())
        now = datetime.now(UTC)
    return now


def _check_sweep_expires_same_day_deadline(store: Store) -> None:
    """The seed-000 incident: an RFC 3339 deadline 60 s in the past, on the same UTC
    date as SQLite's `datetime('now')`, must be rolled back by one sweep."""
    now = _wall_clock_same_day()
    past = store.insert_dispatch(
        "late", RID, 0, CLOSURE_A, RID,
        dispatched_at=now - timedelta(seconds=420), deadline=now - timedelta(seconds=60),
    )
    future = store.insert_dispatch(
        "early", RID, 0, CLOSURE_A, RID,
        dispatched_at=now, deadline=now + timedelta(seconds=300),
    )
    assert past.confirm_deadline_text is not None and "T" in past.confirm_deadline_text
    assert past.confirm_deadline_text[:10] == format_sqlite(now)[:10], "same UTC date"

    expired = store.sweep_expired(now=datetime.now(UTC))

    assert [d.id for d in expired] == [past.id], "the sweep missed an expired deadline"
    late = store.latest_dispatch("late")
    assert late is not None
    assert (late.state, late.terminal_state) == ("rolled-back", "rolled-back")
    early = store.latest_dispatch("early")
    assert early is not None and early.state == "pending" and early.terminal_state is None
    assert future.id == early.id


def test_sweep_rolls_back_a_same_day_expired_deadline(store: Store) -> None:
    _check_sweep_expires_same_day_deadline(store)
    assert store.sweep_expired(now=datetime.now(UTC)) == []  # idempotent


def test_the_sweep_test_catches_the_seed_000_raw_text_compare(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutation check: put the old `confirm_deadline < datetime('now')` back and the
    sweep test above must fail."""
    monkeypatch.setattr(store_module, "SWEEP_PREDICATE", RAW_TEXT_SWEEP)
    with pytest.raises(AssertionError, match="the sweep missed an expired deadline"):
        _check_sweep_expires_same_day_deadline(store)
    # And the raw compare really is the bug: the expired row is still pending.
    late = store.latest_dispatch("late")
    assert late is not None and late.state == "pending"


def test_sweep_with_simulated_time_and_mixed_formats(store: Store) -> None:
    rfc = _dispatch(store, "rfc")  # deadline T0 + 6 min, RFC 3339
    hand = _dispatch(store, "hand")
    store.connection.execute(
        "UPDATE pending_confirms SET confirm_deadline = ? WHERE id = ?",
        (format_sqlite(T0 + timedelta(minutes=3)), hand.id),
    )
    deferred = _dispatch(store, "deferred", window=timedelta(seconds=1))
    store.mark_deferred(deferred.id, now=T0)
    garbage = _dispatch(store, "garbage")
    store.connection.execute(
        "UPDATE pending_confirms SET confirm_deadline = 'soon' WHERE id = ?", (garbage.id,)
    )

    missing = _dispatch(store, "missing")
    store.connection.execute(
        "UPDATE pending_confirms SET confirm_deadline = NULL WHERE id = ?", (missing.id,)
    )
    # A missing or unparseable deadline never keeps a row pending forever.
    assert [d.hostname for d in store.sweep_expired(now=T0 + timedelta(minutes=2))] == [
        "garbage",
        "missing",
    ]
    assert [d.hostname for d in store.sweep_expired(now=T0 + timedelta(minutes=3))] == ["hand"]
    assert store.sweep_expired(now=T0 + timedelta(minutes=5, seconds=59)) == []
    swept = store.sweep_expired(now=T0 + timedelta(minutes=6))  # reached = passed
    assert [d.hostname for d in swept] == ["rfc"]
    assert swept[0].terminal_at == T0 + timedelta(minutes=6)
    assert store.sweep_expired(now=T0 + timedelta(days=1)) == []
    d = store.latest_dispatch("deferred")
    assert d is not None and d.state == dec.DEFERRED  # never swept
    assert rfc.id < hand.id


def test_sweep_predicate_is_the_registered_deadline_function() -> None:
    assert "deadline_passed(confirm_deadline, :now)" in store_module.SWEEP_PREDICATE
    assert "datetime('now')" not in store_module.SWEEP_PREDICATE


# --- participation and rollouts -----------------------------------------------------------


def test_participation_upserts(store: Store) -> None:
    assert store.participation(RID, "web-01") is None
    store.set_healthy(RID, "web-01", since=T0, now=T0)
    store.set_soaked(RID, "web-01", now=T0 + timedelta(minutes=30))
    part = store.participation(RID, "web-01")
    assert part is not None and (part.host_state, part.last_healthy_since) == ("Soaked", T0)
    store.set_participation(RID, "web-01", "Healthy", now=T0, healthy_since=None)  # H14
    part = store.participation(RID, "web-01")
    assert part is not None and part.last_healthy_since is None
    store.set_failed(RID, "web-02", now=T0)
    store.set_reverted(RID, "web-02", now=T0)
    store.set_converged(RID2, "web-03", now=T0)
    store.set_participation(RID2, "web-03", "Converged", now=T0, healthy_since=KEEP)
    assert [(p.rollout_id, p.hostname, p.host_state) for p in store.participation_rows()] == [
        (RID, "web-01", "Healthy"),
        (RID, "web-02", "Reverted"),
        (RID2, "web-03", "Converged"),
    ]
    assert len(store.participation_rows(RID)) == 2


def test_rollouts_supersede_wave_halt_and_converge(store: Store) -> None:
    assert store.ensure_rollout(RID, "stable", now=T0)
    assert not store.ensure_rollout(RID, "stable", now=T0)
    assert store.rollout(RID) == RolloutRow(
        rollout_id=RID, channel="stable", current_wave=0, state="Executing"
    )
    assert store.current_wave("unknown") == 0

    assert store.set_current_wave(RID, 2)
    assert not store.set_current_wave(RID, 1)  # monotonic
    assert store.current_wave(RID) == 2

    assert store.halt_rollout(RID)
    assert not store.halt_rollout(RID)
    ro = store.rollout(RID)
    assert ro is not None and ro.state == "Halted"

    assert store.ensure_rollout(RID2, "stable", now=T0 + timedelta(hours=1))
    old = store.rollout_record(RID)
    assert old is not None
    assert (old.superseded_by, old.superseded_at) == (RID2, T0 + timedelta(hours=1))
    assert [(r.rollout_id, r.superseded) for r in store.rollout_rows()] == [
        (RID, True),
        (RID2, False),
    ]

    row = _dispatch(store, "web-01", rid=RID2)
    store.confirm_dispatch(row.id, now=T0)
    store.set_soaked(RID2, "web-01", now=T0)
    store.set_failed(RID2, "web-02", now=T0)
    assert store.converge_rollout(RID2, now=T0 + timedelta(hours=2)) == 1
    assert store.participation(RID2, "web-02") is not None
    states = {p.hostname: p.host_state for p in store.participation_rows(RID2)}
    assert states == {"web-01": "Converged", "web-02": "Failed"}
    ro = store.rollout(RID2)
    assert ro is not None and ro.terminal_at == T0 + timedelta(hours=2)
    d = store.latest_dispatch("web-01")
    assert d is not None and d.terminal_state == "converged"
    assert not store.set_terminal(RID2, now=T0 + timedelta(hours=3))  # set once


def test_superseded_by_is_a_foreign_key(store: Store) -> None:
    store.ensure_rollout(RID, "stable", now=T0)
    with pytest.raises(sqlite3.IntegrityError):
        store.connection.execute(
            "UPDATE rollouts SET superseded_by = 'nope' WHERE rollout_id = ?", (RID,)
        )


# --- reports and quarantine -----------------------------------------------------------------


def _report(event: str, rollout: str | None = RID) -> wire.ReportRequest:
    return wire.ReportRequest(
        hostname="web-01",
        agent_version="0.1.0",
        occurred_at=T0,
        rollout=rollout,
        event=event,
        details={"closure_hash": CLOSURE_A},
    )


def test_reports(store: Store) -> None:
    assert store.insert_report(_report("activation-started"), event_id="e1",
                               signature_status="unsigned", now=T0)
    assert not store.insert_report(_report("activation-started"), event_id="e1",
                                   signature_status="unsigned", now=T0)
    for i, status in enumerate(("verified", "mismatch", "unsigned")):
        store.insert_report(_report("compliance-failure"), event_id=f"c{i}",
                            signature_status=status, now=T0 + timedelta(seconds=i))
    store.insert_report(_report("runtime-gate-error", None), event_id="r0",
                        signature_status="verified", now=T0)
    recent = store.recent_reports("web-01", limit=3)
    assert [r.event_id for r in recent] == ["c1", "c2", "r0"]
    assert recent[0].report["details"] == {"closure_hash": CLOSURE_A}
    assert recent[0].received_at == T0 + timedelta(seconds=1)
    assert store.outstanding_events() == {RID: {"web-01": 2}}
    assert store.report_hostnames() == ["web-01"]


def test_reports_per_host_are_bounded(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 9 #10: a host cannot grow host_reports without bound; other hosts keep theirs."""
    monkeypatch.setattr(store_module, "REPORTS_PER_HOST", 5)
    other = wire.ReportRequest(
        hostname="web-02", agent_version="0.1.0", occurred_at=T0, rollout=None,
        event="activation-started", details={},
    )
    store.insert_report(other, event_id="o0", signature_status="unsigned", now=T0)
    for i in range(12):
        store.insert_report(_report("activation-started"), event_id=f"e{i}",
                            signature_status="unsigned", now=T0 + timedelta(seconds=i))
    kept = [r.event_id for r in store.recent_reports("web-01", limit=100)]
    assert kept == [f"e{i}" for i in range(7, 12)]
    assert [r.event_id for r in store.recent_reports("web-02")] == ["o0"]


def test_quarantine(store: Store) -> None:
    assert store.quarantine("stable", CLOSURE_A, now=T0, reason="probes failing")
    assert not store.quarantine("stable", CLOSURE_A, now=T0)
    store.quarantine("beta", CLOSURE_B, now=T0)
    assert store.quarantined() == {"beta": (CLOSURE_B,), "stable": (CLOSURE_A,)}
    assert store.clear_quarantine("stable", CLOSURE_A, now=T0 + timedelta(hours=1))
    assert not store.clear_quarantine("stable", CLOSURE_A, now=T0 + timedelta(hours=1))
    assert store.quarantined() == {"beta": (CLOSURE_B,)}
    cleared = [q for q in store.quarantine_records(include_cleared=True) if not q.active]
    assert [(q.channel, q.cleared_at) for q in cleared] == [("stable", T0 + timedelta(hours=1))]
    assert store.quarantine("stable", CLOSURE_A, now=T0 + timedelta(hours=2))  # again
    assert "stable" in store.quarantined()


# --- retention ------------------------------------------------------------------------------


def test_prune_retention_in_both_timestamp_forms(store: Store) -> None:
    now = T0
    conn = store.connection
    store.record_nonce("old", "h", now=now - timedelta(hours=25))
    store.record_nonce("new", "h", now=now - timedelta(hours=23))
    conn.execute(
        "INSERT INTO token_replay (nonce, hostname, first_seen) VALUES ('hand', 'h', ?)",
        (format_sqlite(now - timedelta(days=2)),),
    )
    store.insert_report(_report("activation-started"), event_id="old", signature_status="x",
                        now=now - timedelta(days=8))
    store.insert_report(_report("activation-started"), event_id="new", signature_status="x",
                        now=now - timedelta(days=6))
    old = _dispatch(store, "web-01", at=now - timedelta(days=100))
    store.mark_confirmed(old.id, now=now - timedelta(days=100))
    current = _dispatch(store, "web-01", at=now - timedelta(days=95))  # newest: kept
    stale_pending = _dispatch(store, "web-02", at=now - timedelta(days=100))  # current: kept
    store.ensure_rollout(RID, "stable", now=now - timedelta(days=120))
    store.set_healthy(RID, "web-01", since=now, now=now)
    store.ensure_rollout(RID2, "stable", now=now - timedelta(days=91))  # supersedes RID
    store.set_terminal(RID2, now=now - timedelta(days=10))

    counts = store.prune(now=now)

    assert counts == store_module.PruneCounts(
        token_replay=2, dispatch_history=1, host_reports=1, rollouts=1, participation=1
    )
    assert [r[0] for r in conn.execute("SELECT nonce FROM token_replay")] == ["new"]
    assert [r.event_id for r in store.recent_reports("web-01")] == ["new"]
    assert store.dispatch(old.id) is None
    assert store.dispatch(current.id) is not None
    assert store.dispatch(stale_pending.id) is not None
    assert store.rollout(RID) is None and store.participation(RID, "web-01") is None
    assert store.rollout(RID2) is not None


# --- durability -----------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys, time
    from datetime import UTC, datetime, timedelta
    from nixfleet.cp.store import Store

    store = Store.open(sys.argv[1])
    t0 = datetime(2026, 11, 23, tzinfo=UTC)
    i = 0
    while True:
        row = store.insert_dispatch(
            f"h{i % 7}", "r" * 64, 0, "c" * 32 + "-sys", "r" * 64,
            dispatched_at=t0, deadline=t0 + timedelta(seconds=360),
        )
        assert store.record_nonce(f"nonce-{row.id}", f"h{i % 7}", now=t0)
        print(row.id, flush=True)
        i += 1
        if i == 200:
            time.sleep(600)
    """
)


def test_kill_9_loses_no_committed_row(db: Path) -> None:
    Store.open(db).close()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")]
    )
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    committed: list[int] = []
    try:
        assert child.stdout is not None
        while len(committed) < 150:
            line = child.stdout.readline()
            if not line:
                break
            committed.append(int(line))
        # SIGKILL mid-stream: no close(), no checkpoint, no atexit.
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    stderr = child.stderr.read() if child.stderr else ""
    assert len(committed) == 150, stderr
    assert child.returncode == -signal.SIGKILL

    with Store.open(db) as reopened:
        ids = {r[0] for r in reopened.connection.execute("SELECT id FROM pending_confirms")}
        nonces = {r[0] for r in reopened.connection.execute("SELECT nonce FROM token_replay")}
        assert reopened.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert set(committed) <= ids
    assert {f"nonce-{i}" for i in committed} <= nonces


def test_format_helpers_agree_with_the_store() -> None:
    # The store's text is format_instant's; datetime() in SQL reads it back.
    conn = sqlite3.connect(":memory:")
    text = format_instant(T0.replace(microsecond=5))
    assert conn.execute("SELECT datetime(?)", (text,)).fetchone()[0] == format_sqlite(T0)
