"""`python -m harness.launch --mutant NAME -- MODULE ARGS`: the mutant is active inside the
real child process (issue 10, item 4), and bad usage is one line and exit 2.

The control plane is started as `CpEnv.start` starts it, once as shipped and once
through the launcher with `sweep-raw-text-compare` (seed 000's rollback timer): the
same pending row, its RFC 3339 deadline already past on today's UTC date, is swept by
the shipped CP and never by the mutant one.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from harness.cpenv import CpEnv, declared, sqlite3, wait_until
from harness.launch import launcher
from nixfleet.core.timeutil import format_instant

RID = "cd" * 32
SWEPT = "rolling back: confirm window expired"


def past_deadline_today() -> str:
    """An RFC 3339 instant 2 s ago on the same UTC date as now."""
    now = datetime.now(UTC)
    if (now - timedelta(seconds=2)).date() != now.date():
        time.sleep(3)  # just after midnight UTC
        now = datetime.now(UTC)
    return format_instant(now - timedelta(seconds=2))


def pending_row(host: str, deadline: str) -> str:
    return (
        "INSERT INTO pending_confirms (hostname, rollout_id, wave, target_closure_hash, "
        "target_channel_ref, state, dispatched_at, confirm_deadline) VALUES "
        f"('{host}', '{RID}', 0, 'x-nixos-system-{host}', '{RID}', 'pending', "
        f"'{format_instant(datetime.now(UTC) - timedelta(minutes=5))}', '{deadline}');"
    )


def row_state(env: CpEnv) -> str:
    return sqlite3(env.db_path, "SELECT state FROM pending_confirms;").strip()


@pytest.mark.parametrize("mutant", [None, "sweep-raw-text-compare"])
def test_a_mutant_is_active_inside_the_launched_cp(tmp_path: Path, mutant: str | None) -> None:
    env = CpEnv.create(tmp_path / "env", declared("h1"))
    try:
        env.launcher = launcher(mutant)
        env.publish()
        cp = env.start()  # sweeps every second
        argv = Path(f"/proc/{cp.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert (b"harness.launch" in argv) == (mutant is not None)
        sqlite3(env.db_path, pending_row("h1", past_deadline_today()))
        if mutant is None:
            wait_until(lambda: row_state(env) == "rolled-back", 5, "the sweep")
            assert len(cp.lines(SWEPT)) == 1
        else:
            ticks = len(cp.lines("tick verify_ok"))
            wait_until(lambda: len(cp.lines("tick verify_ok")) >= ticks + 3, 10, "3 more ticks")
            assert row_state(env) == "pending"  # the seed's bug: never expires today
            assert cp.lines(SWEPT) == []
    finally:
        env.close()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--mutant", "no-such-bug", "--", "nixfleet.cp.main"], "invalid choice"),
        (["--mutant", "report-hash-prefix", "nixfleet.cp.main"], "expected `-- MODULE"),
        (["--mutant", "report-hash-prefix", "--"], "no MODULE"),
        (["--mutant", "report-hash-prefix", "--", "no.such.module"], "cannot import"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(args: list[str], says: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "harness.launch", *args], capture_output=True, text=True
    )
    assert res.returncode == 2
    assert says in res.stderr
    assert "Traceback" not in res.stderr


def test_the_module_runs_with_its_arguments_and_exit_status() -> None:
    res = subprocess.run(
        [*launcher("report-hash-prefix"), "nixfleet.cp.main", "--no-such-flag"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2  # the CP's own usage error, passed through
    assert "--no-such-flag" in res.stderr
    assert "Traceback" not in res.stderr
