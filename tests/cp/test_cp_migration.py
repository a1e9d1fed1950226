"""Seed 000 "SQLite migration error on CP boot" against the real CP process: a DB
left by an older CP refuses start-up (exact message, hint, port never bound), and
the seed 001 wipe procedure fixes it."""

from __future__ import annotations

import threading

from harness.cpenv import MakeEnv, declared, port_open, sh, sqlite3, wait_until

MESSAGE = "applied migration V1__initial_schema is different than filesystem one V1__initial"

OLD_DB = """
CREATE TABLE refinery_schema_history (
    version INTEGER PRIMARY KEY, name TEXT, applied_on TEXT, checksum TEXT);
INSERT INTO refinery_schema_history VALUES
    (1, 'initial_schema', '2025-01-01T00:00:00Z', '1234');
CREATE TABLE pending_confirms (id INTEGER PRIMARY KEY, hostname TEXT);
INSERT INTO pending_confirms (hostname) VALUES ('h1');
PRAGMA journal_mode = WAL;
"""


def test_migration_mismatch_refuses_then_wipe_starts(make_env: MakeEnv) -> None:
    env = make_env(declared("h1"))
    env.publish()
    env.state_dir.mkdir(parents=True, exist_ok=True)
    sqlite3(env.db_path, OLD_DB)

    # Watch the port for the CP's whole life: it must never accept a connection.
    bound: list[bool] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if port_open(env.port):
                bound.append(True)
            stop.wait(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        cp = env.start(wait=False)
        rc = cp.proc.wait(timeout=30)
    finally:
        stop.set()
        watcher.join()
    assert rc != 0
    assert not bound, "the port was bound"
    lines = cp.log().splitlines()
    first = next(i for i, ln in enumerate(lines) if MESSAGE in ln)
    assert lines[first].endswith(MESSAGE)
    hint = lines[first + 1]
    assert hint.startswith("hint:") and "state.db-wal" in hint and "state.db-shm" in hint
    assert "control plane listening" not in cp.log()
    assert "Traceback" not in cp.log()
    # The divergent DB was left untouched.
    assert sqlite3(env.db_path, "SELECT name FROM refinery_schema_history;").strip() == (
        "initial_schema"
    )

    # Seed 001, step 2, then start again.
    sh("rm -rf state.db state.db-wal state.db-shm", cwd=env.state_dir)
    cp = env.start()
    wait_until(lambda: port_open(env.port), 5, "CP listening")
    history = sqlite3(env.db_path, "SELECT version, name FROM refinery_schema_history;")
    assert history.strip() == "1|initial"
