"""`--confirm-deadline-secs` too short for the agent's confirm retries is refused at
start (issue 9 #11): with a 10 s window one failed confirm (a 1 s CP restart) tripped
the agent's watchdog and halted rollouts."""

from __future__ import annotations

import pytest

from harness.cpenv import MakeEnv, declared, wait_until
from nixfleet.core.agent import MIN_CONFIRM_WINDOW_SECS


@pytest.mark.parametrize("window", ["1", "10", str(MIN_CONFIRM_WINDOW_SECS - 1)])
def test_too_short_a_confirm_window_is_one_line_and_exit_2(make_env: MakeEnv, window: str) -> None:
    env = make_env(declared("h1"))
    env.publish()
    cp = env.start([*env.args(), "--confirm-deadline-secs", window], wait=False)
    wait_until(lambda: cp.proc.poll() is not None, 20, "the CP refusing to start")
    assert cp.proc.returncode == 2
    log = cp.log()
    assert "Traceback" not in log and "control plane listening" not in log
    [line] = log.strip().splitlines()
    assert line.startswith(
        f"nixfleet-control-plane: --confirm-deadline-secs must be ≥ "
        f"{MIN_CONFIRM_WINDOW_SECS}, got {window} ("
    ), line
    assert "retry a failed confirm at least 3 times" in line


def test_the_shortest_allowed_window_starts(make_env: MakeEnv) -> None:
    env = make_env(declared("h1"))
    env.publish()
    cp = env.start([*env.args(), "--confirm-deadline-secs", str(MIN_CONFIRM_WINDOW_SECS)])
    assert cp.proc.poll() is None
