"""Seed 000 "Rollback timer never marks expired rows", against the running CP: an RFC
3339 deadline on the same UTC date as `datetime('now')` (where the old raw string
comparison put 'T' above ' ' and never expired anything) is swept at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from harness.cpenv import MakeEnv, assert_clean_log, declared, sqlite3, wait_until
from nixfleet.core.timeutil import format_instant

RID = "ab" * 32


def insert(host: str, deadline: str) -> str:
    return (
        "INSERT INTO pending_confirms (hostname, rollout_id, wave, target_closure_hash, "
        "target_channel_ref, state, dispatched_at, confirm_deadline) VALUES "
        f"('{host}', '{RID}', 0, 'x-nixos-system-{host}', '{RID}', 'pending', "
        f"'{format_instant(datetime.now(UTC) - timedelta(minutes=10))}', '{deadline}');"
    )


def states(db: Path) -> dict[str, str]:
    out = sqlite3(db, "SELECT hostname, state FROM pending_confirms ORDER BY id;")
    return dict(line.split("|") for line in out.splitlines())


def test_rollback_timer_same_utc_date(make_env: MakeEnv) -> None:
    env = make_env(declared("h1"))
    env.publish()
    cp = env.start()  # sweeps every second (--sweep-interval-secs 1)

    def same_date_past() -> datetime | None:
        now = datetime.now(UTC)
        past = now - timedelta(seconds=60)
        return past if past.date() == now.date() else None

    # Just after midnight UTC, wait until 60 s ago is still today.
    past = wait_until(same_date_past, 70, "60 s ago on the same UTC date", interval=0.5)
    sqlite_now = sqlite3(env.db_path, "SELECT datetime('now');").strip()
    assert format_instant(past)[:10] == sqlite_now[:10]
    future = datetime.now(UTC) + timedelta(minutes=5)
    sqlite3(
        env.db_path,
        insert("past-rfc3339", format_instant(past))
        + insert("past-offset", past.isoformat())  # +00:00 form, microseconds
        + insert("past-sqlite", past.strftime("%Y-%m-%d %H:%M:%S"))  # SQLite's own form
        + insert("future", format_instant(future))
        + insert("future-sqlite", future.strftime("%Y-%m-%d %H:%M:%S")),
    )
    # The raw comparison the seed describes would have kept these rows pending.
    raw = sqlite3(
        env.db_path,
        "SELECT count(*) FROM pending_confirms WHERE confirm_deadline < datetime('now');",
    )
    assert raw.strip() == "1"  # only the space-separated one

    # Within one sweep period (plus slack): every past row expired, the future ones not.
    wait_until(lambda: states(env.db_path)["past-rfc3339"] == "rolled-back", 3, "rollback sweep")
    assert states(env.db_path) == {
        "past-rfc3339": "rolled-back",
        "past-offset": "rolled-back",
        "past-sqlite": "rolled-back",
        "future": "pending",
        "future-sqlite": "pending",
    }
    swept = cp.lines("rolling back: confirm window expired")
    assert len(swept) == 3
    terminal = sqlite3(
        env.db_path,
        "SELECT DISTINCT terminal_state FROM pending_confirms WHERE state = 'rolled-back';",
    )
    assert terminal.strip() == "rolled-back"

    # Several sweeps later the future rows are still pending.
    n = len(cp.lines("tick verify_ok"))
    wait_until(lambda: len(cp.lines("tick verify_ok")) >= n + 2, 10, "two more ticks")
    assert states(env.db_path)["future"] == "pending"
    assert states(env.db_path)["future-sqlite"] == "pending"
    assert_clean_log(cp)
