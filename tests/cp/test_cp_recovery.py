"""Seed 001 (disaster recovery): stop, wipe state.db*, start, then the Verify section
run verbatim against the real CP process (port and paths substituted)."""

from __future__ import annotations

import json
import signal

from fleet_sim.fleetgen import fake_closure
from harness.cpenv import MakeEnv, checkin_body, declared, post, sh, wait_until

HOSTS = ("h1", "h2")


def test_seed_001_wipe_and_verify(make_env: MakeEnv) -> None:
    env = make_env(declared(*HOSTS, "h3"))
    raw, _sig = env.publish()
    signed_at = json.loads(raw)["meta"]["signedAt"]
    env.publish_revocations({})
    args = env.args(revocations=True)
    certs = {h: env.agent(h) for h in HOSTS}
    op = env.operator()

    cp = env.start(args)
    for h in HOSTS:
        assert (
            post(
                env, "/v1/agent/checkin", checkin_body(h, fake_closure(h, 0)), cert=certs[h]
            ).status
            == 200
        )
    assert (env.state_dir / "state.db-wal").exists()

    # 1. Stop the service.
    assert cp.stop(signal.SIGTERM) == 0
    # 2. Wipe the SQLite database.
    sh("rm -rf state.db state.db-wal state.db-shm", cwd=env.state_dir)
    assert not list(env.state_dir.glob("state.db*"))
    # 3. Restart.
    cp = env.start(args)

    # Verify 1: CP healthy, snapshot primed (within ~30 s of restart).
    health = f"curl -sk https://127.0.0.1:{env.port}/healthz | jq '.last_tick_at != null'"
    wait_until(lambda: sh(health).strip() == "true", 30, "healthz last_tick_at")

    # Verify 2: the verified-fleet snapshot is the artifact's (mTLS, operator pair).
    channel = (
        f"curl -sk --cacert {env.pki.ca.cert} --cert {op.cert} --key {op.key} "
        f"https://127.0.0.1:{env.port}/v1/channels/stable | jq '.signed_at'"
    )
    assert sh(channel).strip() == json.dumps(signed_at)

    # The agents come back with the certs they already have.
    for h in HOSTS:
        reply = post(env, "/v1/agent/checkin", checkin_body(h, fake_closure(h, 0)), cert=certs[h])
        assert reply.status == 200, reply
        assert reply.json()["target"]["closureHash"] == fake_closure(h, 1)

    # Verify 3: revocations sidecar replayed.
    log = cp.log_path
    revocations = sh(f"grep -E 'revocations poll|cert_revocations' {log}")
    assert "revocations poll" in revocations

    # Verify 4: every expected agent has checked in (h3 never did).
    seen = sh(f"grep 'checkin received' {log} | awk '{{print $NF}}' | sort -u")
    assert seen.split() == list(HOSTS)
