"""`--confirm-deadline-secs` too short for the agent's confirm retries is refused at
start (issue 9 #11): with a 10 s window one failed confirm (a 1 s CP restart) tripped
the agent's watchdog and halted rollouts. So is one shorter than the agents' switch
timeout + 10 s (`--agent-switch-timeout-secs`): a switch outlasting the window is
rolled back by the CP, answered 410 and rolled back by its agent (issue 11,
confirm-deadline-cascade)."""

from __future__ import annotations

import argparse
import contextlib
import socket

import pytest

from harness.cpenv import MakeEnv, declared, wait_until
from nixfleet.agent.config import DEFAULT_SWITCH_TIMEOUT_SECS
from nixfleet.core.agent import MIN_CONFIRM_WINDOW_SECS
from nixfleet.cp.config import CONFIRM_MARGIN_SECS, add_serve_flags, confirm_window_problem
from nixfleet.cp.main import main


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
    window = MIN_CONFIRM_WINDOW_SECS
    budget = window - CONFIRM_MARGIN_SECS
    cp = env.start(
        [
            *env.args(),
            *("--confirm-deadline-secs", str(window)),
            *("--agent-switch-timeout-secs", str(budget)),
        ]
    )
    assert cp.proc.poll() is None


# --- the confirm-deadline cascade: a window the agents' switch can outlast ----------------


@pytest.mark.parametrize(
    ("window", "budget", "safe"),
    [(360, 300, True), (310, 300, True), (309, 300, False), (120, 300, False), (30, 20, True)],
)
def test_confirm_window_problem_wants_the_switch_timeout_and_10_s(
    window: int, budget: float, safe: bool
) -> None:
    problem = confirm_window_problem(window, budget)
    assert (problem is None) is safe
    if problem is not None:
        assert "\n" not in problem
        assert problem.startswith(f"--confirm-deadline-secs {window} is below the agents' ")
        assert f"({budget:g} s, --agent-switch-timeout-secs) + 10 s" in problem
        assert problem.endswith(f"use ≥ {budget + 10:g}")


def test_the_flag_defaults_are_safe() -> None:
    parser = argparse.ArgumentParser()
    add_serve_flags(parser)
    args = parser.parse_args(["--agent-cn-suffix", "fleet.test"])
    assert args.agent_switch_timeout_secs == DEFAULT_SWITCH_TIMEOUT_SECS == 300
    assert confirm_window_problem(args.confirm_deadline_secs, DEFAULT_SWITCH_TIMEOUT_SECS) is None


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--confirm-deadline-secs", "120"], "--confirm-deadline-secs 120 is below the agents'"),
        (
            ["--confirm-deadline-secs", "360", "--agent-switch-timeout-secs", "351"],
            "--confirm-deadline-secs 360 is below the agents' switch timeout (351 s",
        ),
        (["--agent-switch-timeout-secs", "0"], "--agent-switch-timeout-secs must be ≥ 1"),
        (["--agent-switch-timeout-secs", "nan"], "--agent-switch-timeout-secs must be ≥ 1"),
        (["--agent-switch-timeout-secs", "soon"], "--agent-switch-timeout-secs"),
    ],
)
def test_serve_refuses_a_window_below_the_switch_budget(
    make_env: MakeEnv, flags: list[str], says: str
) -> None:
    env = make_env(declared("h1"))
    env.publish()
    cp = env.start([*env.args(), *flags], wait=False)
    wait_until(lambda: cp.proc.poll() is not None, 20, "the CP refusing to start")
    assert cp.proc.returncode == 2
    log = cp.log()
    assert "Traceback" not in log and "control plane listening" not in log
    [line] = log.strip().splitlines()
    assert line.startswith("nixfleet-control-plane") and says in line, line
    assert not port_open(env.port)


def test_check_config_refuses_it_too(make_env: MakeEnv, capsys: pytest.CaptureFixture[str]) -> None:
    env = make_env(declared("h1"), with_forge=False)
    env.state_dir.mkdir(parents=True, exist_ok=True)
    env.rollouts_dir.mkdir(exist_ok=True)
    argv = env.args()
    flags = argv[argv.index("serve") + 1 :]
    assert main(["check-config", *flags, "--confirm-deadline-secs", "300"]) == 2
    err = capsys.readouterr().err
    assert "--confirm-deadline-secs 300 is below the agents' switch timeout (300 s" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
