"""Checkin → dispatch → confirm over HTTP against the real CP process, the ghost-loop
guard (seed 000), 410 for a confirm nothing backs, and orphan recovery after a wipe
in the middle of an activation (seed 001: the dispatch tables are soft state)."""

from __future__ import annotations

from pathlib import Path

from harness.cpenv import (
    MakeEnv,
    aio_post,
    assert_clean_log,
    checkin_body,
    confirm_body,
    declared,
    post,
    sh,
    sqlite3,
)
from harness.fleetgen import fake_closure


def rows(db: Path, host: str) -> list[list[str]]:
    out = sqlite3(
        db,
        "SELECT id, state, target_closure_hash FROM pending_confirms "
        f"WHERE hostname = '{host}' ORDER BY id;",
    )
    return [line.split("|") for line in out.splitlines()]


async def test_confirm_flow(make_env: MakeEnv) -> None:
    env = make_env(declared("h1", "h2"))
    env.publish()
    h1, h2 = env.agent("h1"), env.agent("h2")
    cp = env.start()
    old, new = fake_closure("h1", 0), fake_closure("h1", 1)

    status, reply = await aio_post(env, "/v1/agent/checkin", checkin_body("h1", old), identity=h1)
    assert status == 200, reply
    target = reply["target"]
    assert target["closureHash"] == new
    assert target["activate"]["confirmEndpoint"] == "/v1/agent/confirm"
    rid = target["rolloutId"]
    assert rows(env.db_path, "h1") == [["1", "pending", new]]

    # While the row is pending, another checkin gets no second target.
    status, reply = await aio_post(env, "/v1/agent/checkin", checkin_body("h1", old), identity=h1)
    assert status == 200 and reply["target"] is None

    # Confirm: 204, the row is confirmed (curl, as in a runbook).
    confirm = confirm_body("h1", rid, new, wave=target["waveIndex"] or 0)
    reply_c = post(env, "/v1/agent/confirm", confirm, cert=h1)
    assert reply_c.status == 204 and reply_c.body == "", reply_c
    assert rows(env.db_path, "h1") == [["1", "confirmed", new]]
    cp.wait_log(r"confirm received rollout=\S+ .*host=h1$")

    # The agent now reports the target closure: converged, no target, no new row.
    for _ in range(3):
        status, reply = await aio_post(
            env, "/v1/agent/checkin", checkin_body("h1", new), identity=h1
        )
        assert status == 200 and reply["target"] is None, reply
    assert rows(env.db_path, "h1") == [["1", "confirmed", new]]

    # A repeated confirm is still 204 (orphan recovery matches the declaration).
    assert post(env, "/v1/agent/confirm", confirm, cert=h1).status == 204

    # Unknown rollout and a closure that is not the declared one: 410.
    bogus = confirm_body("h1", "cd" * 32, fake_closure("h1", 7))
    reply_c = post(env, "/v1/agent/confirm", bogus, cert=h1)
    assert reply_c.status == 410, reply_c
    assert rows(env.db_path, "h1") == [["1", "confirmed", new]]
    # The right rollout with a wrong closure: 410 too.
    assert (
        post(
            env,
            "/v1/agent/confirm",
            {**confirm, "generation": {"closureHash": fake_closure("h1", 7), "bootId": "b"}},
            cert=h1,
        ).status
        == 410
    )

    # h2 is dispatched, then the CP is wiped and restarted mid-activation.
    old2, new2 = fake_closure("h2", 0), fake_closure("h2", 1)
    status, reply = await aio_post(env, "/v1/agent/checkin", checkin_body("h2", old2), identity=h2)
    target2 = reply["target"]
    assert target2["closureHash"] == new2
    assert cp.stop() == 0
    sh("rm -rf state.db state.db-wal state.db-shm", cwd=env.state_dir)
    cp = env.start()
    assert rows(env.db_path, "h2") == []

    # The agent's confirm arrives at the fresh CP: orphan recovery answers 204.
    status, _ = await aio_post(
        env, "/v1/agent/confirm", confirm_body("h2", target2["rolloutId"], new2), identity=h2
    )
    assert status == 204
    assert rows(env.db_path, "h2") == [["1", "confirmed", new2]]
    cp.wait_log(r"confirm received \(orphan recovered\) .*host=h2$")
    status, reply = await aio_post(env, "/v1/agent/checkin", checkin_body("h2", new2), identity=h2)
    assert status == 200 and reply["target"] is None
    assert len(rows(env.db_path, "h2")) == 1
    assert_clean_log(cp)
