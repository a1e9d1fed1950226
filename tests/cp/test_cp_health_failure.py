"""`--health-failure-secs`: how long a Healthy host's probes may fail before H11 marks
it Failed (default 60 s). A fleet whose agents poll every few seconds (the local
harness) fails an unhealthy host in proportion, not after a fixed minute."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from fleet_sim.fleetgen import fake_closure
from harness.cpenv import (
    CpEnv,
    MakeEnv,
    aio_post,
    checkin_body,
    confirm_body,
    count_lines,
    declared,
    sqlite3,
    wait_until,
)

FAILED = "health: host failed after sustained probe failures"


def failing(host: str, closure: str) -> dict[str, Any]:
    probe = {"name": "app", "kind": "exec", "status": "fail", "failureReason": "exit 1"}
    return checkin_body(host, closure, healthProbes=[probe], healthCheckMode="enforce")


@pytest.mark.parametrize("secs", ["9", "3601", "ten"])
def test_out_of_range_is_one_line_and_exit_2(make_env: MakeEnv, secs: str) -> None:
    env = make_env(declared("h1"))
    env.publish()
    cp = env.start([*env.args(), "--health-failure-secs", secs], wait=False)
    wait_until(lambda: cp.proc.poll() is not None, 20, "the CP refusing to start")
    assert cp.proc.returncode == 2
    log = cp.log()
    assert "Traceback" not in log and "control plane listening" not in log
    [line] = log.strip().splitlines()
    assert "--health-failure-secs" in line, line


async def test_a_healthy_host_failing_its_probes_fails_after_the_threshold(
    make_env: MakeEnv,
) -> None:
    env = make_env(declared("h1"))
    env.publish()
    h1 = env.agent("h1")
    cp = env.start([*env.args(), "--health-failure-secs", "10"])
    old, new = fake_closure("h1", 0), fake_closure("h1", 1)
    status, reply = await aio_post(env, "/v1/agent/checkin", failing("h1", old), identity=h1)
    assert status == 200 and reply["target"]["closureHash"] == new, reply
    target = reply["target"]
    confirm = confirm_body("h1", target["rolloutId"], new, wave=target["waveIndex"] or 0)
    assert (await aio_post(env, "/v1/agent/confirm", confirm, identity=h1))[0] == 204
    healthy_at = time.monotonic()
    while FAILED not in cp.log() and time.monotonic() - healthy_at < 30:
        status, _ = await aio_post(env, "/v1/agent/checkin", failing("h1", new), identity=h1)
        assert status == 200
        await asyncio.sleep(0.5)
    took = time.monotonic() - healthy_at
    assert FAILED in cp.log(), f"not failed after {took:.0f} s"
    assert 10 <= took < 20, took


async def test_probes_sent_before_the_switch_do_not_soak_the_new_system(
    make_env: MakeEnv,
) -> None:
    """No soak on the checkin from the previous system: its probes passed there. The
    host soaks once a checkin from the new system carries results."""
    env = make_env(declared("h1"))
    env.publish()
    h1 = env.agent("h1")
    cp = env.start()
    old, new = fake_closure("h1", 0), fake_closure("h1", 1)
    passing = {"name": "app", "kind": "exec", "status": "pass"}
    body = checkin_body("h1", old, healthProbes=[passing], healthCheckMode="enforce")
    status, reply = await aio_post(env, "/v1/agent/checkin", body, identity=h1)
    assert status == 200, reply
    target = reply["target"]
    confirm = confirm_body("h1", target["rolloutId"], new, wave=target["waveIndex"] or 0)
    assert (await aio_post(env, "/v1/agent/confirm", confirm, identity=h1))[0] == 204
    ticks = count_lines(cp, "tick verify_ok=true")
    wait_until(lambda: count_lines(cp, "tick verify_ok=true") >= ticks + 3, 15, "three ticks")
    assert state(env, "h1") == "Healthy"
    body = checkin_body("h1", new, healthProbes=[passing], healthCheckMode="enforce")
    assert (await aio_post(env, "/v1/agent/checkin", body, identity=h1))[0] == 200
    wait_until(lambda: state(env, "h1") != "Healthy", 15, "the soak")


def state(env: CpEnv, host: str) -> str:
    return sqlite3(
        env.db_path, f"SELECT host_state FROM host_rollout_state WHERE hostname = '{host}'"
    ).strip()
