"""A full disk under the CP's state dir (issue 9 item 6), on a small tmpfs mounted here:
503 with Retry-After and one rate-limited line for requests and timers alike, never a
500 or a traceback; /healthz answers; once space is freed the CP works again and
nothing committed is lost. A first start on a full disk is one line and exit ≠ 0."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_sim.fleetgen import fake_closure
from harness.cpenv import (
    CpEnv,
    MakeEnv,
    assert_clean_log,
    checkin_body,
    curl,
    declared,
    post,
    sqlite3,
    table_counts,
    wait_until,
)

UNAVAILABLE = "state db unavailable: database or disk is full error=SQLITE_FULL"
TMPFS_SIZE = "8m"


def fill(dir: Path) -> Path:
    """Write a file until the filesystem says ENOSPC, at page granularity at the end."""
    path = dir / "filler"
    with path.open("wb", buffering=0) as fh:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return path


@pytest.fixture
def env(make_env: MakeEnv) -> Iterator[CpEnv]:
    """A CpEnv whose state dir (state.db, -wal, -shm) is a fresh tmpfs of 8 MiB."""
    env = make_env(declared("h1", "h2"))
    env.state_dir.mkdir(parents=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(env.state_dir)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs on {env.state_dir} (needs root): {res.stderr}")
    try:
        yield env
    finally:
        for cp in env.processes:
            cp.stop()
        if subprocess.run(["umount", str(env.state_dir)]).returncode != 0:
            subprocess.run(["umount", "-l", str(env.state_dir)], check=True)


def checkin(env: CpEnv, host: str) -> tuple[int, str]:
    """A checkin from a host still on its old closure: answered with a dispatch row."""
    reply = curl(
        env.curl(
            "/v1/agent/checkin",
            "-i",
            "-H", "content-type: application/json",
            "--data-binary", json.dumps(checkin_body(host, fake_closure(host, 0))),
            cert=env.agent(host),
        )
    )  # fmt: skip
    head = reply.body.split("\r\n\r\n", 1)[0].lower()
    return reply.status, head


def test_full_disk_is_503_and_one_line_then_recovers(env: CpEnv) -> None:
    env.publish()
    # The verified-fleet cache off the tmpfs: what is tested here is the DB.
    cp = env.start([*env.args(), "--snapshot-cache", str(env.dir / "verified-fleet.json")])
    cp.wait_log("reconcile: open_rollout")
    h1 = env.agent("h1")
    reply = post(env, "/v1/agent/checkin", checkin_body("h1", fake_closure("h1", 0)), cert=h1)
    assert reply.status == 200 and reply.json()["target"], reply
    committed = sqlite3(env.db_path, "SELECT id, hostname, rollout_id FROM pending_confirms")
    before = table_counts(env.db_path)

    filler = fill(env.state_dir)
    # A newer release: the timers now have writes to make (open its rollout) and fail.
    raw, _ = env.publish(declared("h1", "h2", generation=2))
    new_commit = json.loads(raw)["meta"]["ciCommit"]
    line = cp.wait_log(UNAVAILABLE + r" during=(tick|sweep)")
    assert line.endswith("answering 503 until it clears suppressed=0"), line

    # Requests that must write get 503 + Retry-After, and no new line.
    for _ in range(5):
        status, head = checkin(env, "h2")
        assert status == 503, head
        assert "retry-after: 30" in head, head
    assert curl(env.curl("/healthz")).status == 200
    assert len(cp.lines("state db unavailable")) == 1, cp.lines("state db unavailable")
    assert_clean_log(cp)

    # Space is back: the same requests work, the timers too, nothing committed is gone.
    filler.unlink()
    wait_until(lambda: checkin(env, "h2")[0] == 200, 15, "a checkin once space is back")
    cp.wait_log(f"tick verify_ok=true .*ci_commit={new_commit} ")
    assert sqlite3(env.db_path, "PRAGMA integrity_check").strip() == "ok"
    after = table_counts(env.db_path)
    assert all(after[t] >= n for t, n in before.items()), (before, after)
    kept = sqlite3(env.db_path, "SELECT id, hostname, rollout_id FROM pending_confirms")
    assert set(committed.splitlines()) <= set(kept.splitlines())
    assert_clean_log(cp)


def test_first_start_on_a_full_disk_is_one_line(env: CpEnv) -> None:
    env.publish()
    fill(env.state_dir)
    cp = env.start(wait=False)
    assert cp.proc.wait(30) != 0
    lines = [ln for ln in cp.log().splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    assert str(env.db_path) in lines[0] and "full" in lines[0], lines
    assert not os.path.exists(env.db_path) or os.path.getsize(env.db_path) == 0
