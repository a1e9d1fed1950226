"""Checkin → dispatch → confirm over HTTP against the real CP process, the ghost-loop
guard (seed 000), 410 for a confirm nothing backs, and orphan recovery after a wipe
in the middle of an activation (seed 001: the dispatch tables are soft state)."""

from __future__ import annotations

import json
from pathlib import Path

from fleet_sim.fleetgen import fake_closure
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

    # While the row is pending, a checkin on the old closure means the agent lost the
    # target (killed before switching): the same target again, no second row.
    status, reply = await aio_post(env, "/v1/agent/checkin", checkin_body("h1", old), identity=h1)
    assert status == 200 and reply["target"]["closureHash"] == new, reply
    assert reply["target"]["rolloutId"] == rid
    assert 0 < reply["target"]["activate"]["confirmWindowSecs"] <= 360
    assert rows(env.db_path, "h1") == [["1", "pending", new]]
    cp.wait_log(r"dispatch: target re-offered .*host=h1$")

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
    # The right rollout with a closure it never dispatched: 409, nothing written.
    assert (
        post(
            env,
            "/v1/agent/confirm",
            {**confirm, "generation": {"closureHash": fake_closure("h1", 7), "bootId": "b"}},
            cert=h1,
        ).status
        == 409
    )
    assert rows(env.db_path, "h1") == [["1", "confirmed", new]]

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


def participation(db: Path, host: str) -> str:
    sql = f"SELECT host_state FROM host_rollout_state WHERE hostname = '{host}';"
    return sqlite3(db, sql).strip()


async def test_confirm_for_what_was_never_dispatched_is_refused(make_env: MakeEnv) -> None:
    """Issue 9 #1: a confirm must match its row's closure and wave. Before the fix any
    closure or wave answered 204 and marked the host Healthy on its old closure."""
    env = make_env(declared("h1"))
    env.publish()
    h1 = env.agent("h1")
    cp = env.start()
    old, new = fake_closure("h1", 0), fake_closure("h1", 1)
    status, reply = await aio_post(env, "/v1/agent/checkin", checkin_body("h1", old), identity=h1)
    assert status == 200, reply
    rid, wave = reply["target"]["rolloutId"], reply["target"]["waveIndex"] or 0
    pending = rows(env.db_path, "h1")
    assert pending == [["1", "pending", new]]

    lies = {
        "closure never dispatched": confirm_body("h1", rid, old, wave=wave),
        "other closure": confirm_body("h1", rid, fake_closure("h1", 7), wave=wave),
        "wave -1": confirm_body("h1", rid, new, wave=-1),
        "wave 7": confirm_body("h1", rid, new, wave=7),
    }
    for what, body in lies.items():
        reply_c = post(env, "/v1/agent/confirm", body, cert=h1)
        assert reply_c.status == 409, (what, reply_c)
        assert "dispatched" in reply_c.json()["reason"], (what, reply_c)
    # A 400-digit wave never reaches the decision: the parser refuses it.
    body = json.dumps(confirm_body("h1", rid, new, wave=0))
    body = body.replace('"wave": 0', '"wave": ' + "9" * 400)
    huge = post(env, "/v1/agent/confirm", body, cert=h1)
    assert 400 <= huge.status < 500, huge
    assert rows(env.db_path, "h1") == pending
    assert participation(env.db_path, "h1") != "Healthy"
    cp.wait_log(r"confirm rejected: mismatch rollout=\S+ dispatched=\S+ .*host=h1$")

    final = post(env, "/v1/agent/confirm", confirm_body("h1", rid, new, wave=wave), cert=h1)
    assert final.status == 204, final
    assert rows(env.db_path, "h1") == [["1", "confirmed", new]]
    assert participation(env.db_path, "h1") == "Healthy"
    assert_clean_log(cp)
