"""Bad input against the real CP process: every case gets its documented 4xx (or, for
a foreign client cert, no successful response), never a 500, never a traceback in
the log, and the DB loses (and gains) nothing."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from fleet_sim.fleetgen import fake_closure
from harness.cpenv import (
    CpEnv,
    MakeEnv,
    Reply,
    aio_post,
    assert_clean_log,
    checkin_body,
    curl,
    declared,
    enroll_body,
    post,
    sqlite3,
    table_counts,
)
from harness.pki import AgentCert

MAX_BODY = 8192


def status_of(reply: Reply, expected: int, what: str) -> None:
    assert reply.status == expected, f"{what}: {reply}"
    if reply.body:
        body = reply.json()
        assert set(body) == {"error", "reason"}, f"{what}: {body}"


@pytest.fixture
def env(make_env: MakeEnv) -> CpEnv:
    env = make_env(declared("h1", "h2", "h3", "gone"))
    env.publish()
    env.extra_args += ["--max-body-bytes", str(MAX_BODY)]
    return env


async def test_bad_input_gets_4xx_and_loses_nothing(env: CpEnv) -> None:
    h1 = env.agent("h1")
    gone = env.pki.issue_agent("gone", now=datetime.now(UTC) - timedelta(minutes=5))
    foreign = env.pki.issue_agent("h2", by_other_ca=True)
    foreign_op = env.pki.issue_operator("mallory", by_other_ca=True)
    cp = env.start()

    # Some state worth losing: a dispatch, an enrolment, an operator revocation.
    assert (
        post(env, "/v1/agent/checkin", checkin_body("h1", fake_closure("h1", 0)), cert=h1).status
        == 200
    )
    enrolled = enroll_body(env, "h3")
    status, issued = await aio_post(env, "/v1/enroll", enrolled)
    assert status == 200, issued
    sqlite3(
        env.db_path,
        "INSERT INTO cert_revocations (hostname, not_before, reason, "
        "revoked_by) VALUES ('gone', datetime('now'), 'compromised', 'me');",
    )
    before = table_counts(env.db_path)
    assert before["pending_confirms"] == 1 and before["token_replay"] == 1

    checkin = checkin_body("h1", fake_closure("h1", 0))
    confirm = {
        "hostname": "h1",
        "rollout": "ab" * 32,
        "wave": 0,
        "generation": {"closureHash": fake_closure("h1", 1), "bootId": "b"},
    }

    # No client cert: TLS is up (the cert is optional at the handshake), mTLS routes 401.
    for path in ("/v1/whoami", "/v1/hosts", "/v1/channels/stable", "/metrics"):
        status_of(curl(env.curl(path)), 401, f"GET {path} without cert")
    for path, body in (
        ("/v1/agent/checkin", checkin),
        ("/v1/agent/confirm", confirm),
        ("/v1/agent/renew", {"csrPem": enrolled["csrPem"]}),
    ):
        status_of(post(env, path, body, cert=None), 401, f"POST {path} without cert")
    status, _ = await aio_post(env, "/v1/agent/checkin", checkin)
    assert status == 401
    assert curl(env.curl("/healthz")).status == 200

    # A cert from another CA: no successful response (TLS 1.3 rejects it after the
    # client's handshake is done; pinned to TLS 1.2 the handshake itself fails).
    for cert in (foreign, foreign_op):
        assert curl(env.curl("/v1/whoami", cert=cert)).status == 0
        pinned = subprocess.run(
            env.curl("/v1/whoami", "--tls-max", "1.2", cert=cert), capture_output=True, timeout=20
        )
        assert pinned.returncode == 35, pinned
    with pytest.raises(aiohttp.ClientError):
        await aio_post(env, "/v1/agent/checkin", checkin_body("h2", "x"), identity=foreign)

    # The CN names another host than the body: 403.
    for path, body in (
        ("/v1/agent/checkin", checkin_body("h2", fake_closure("h2", 0))),
        ("/v1/agent/confirm", {**confirm, "hostname": "h2"}),
        (
            "/v1/agent/report",
            {
                "hostname": "h2",
                "agentVersion": "t",
                "occurredAt": "2026-01-01T00:00:00Z",
                "rollout": None,
                "event": "activation-failed",
                "details": {},
            },
        ),
    ):
        status_of(post(env, path, body, cert=h1), 403, f"{path} as h1 for h2")
    status, _ = await aio_post(
        env, "/v1/agent/checkin", checkin_body("h2", fake_closure("h2", 0)), identity=h1
    )
    assert status == 403

    # A revoked cert: 401 on every /v1/* route.
    status_of(
        post(env, "/v1/agent/checkin", checkin_body("gone", fake_closure("gone", 0)), cert=gone),
        401,
        "revoked checkin",
    )
    status_of(curl(env.curl("/v1/whoami", cert=gone)), 401, "revoked whoami")

    # The enrolment token again: 409. A tampered token: 401.
    status_of(post(env, "/v1/enroll", enrolled, cert=None), 409, "replayed nonce")
    fresh = enroll_body(env, "h2")
    tampered = json.loads(json.dumps(fresh))
    tampered["token"]["claims"]["expiresAt"] = "2099-01-01T00:00:00Z"
    status_of(post(env, "/v1/enroll", tampered, cert=None), 401, "tampered claims")
    tampered = json.loads(json.dumps(fresh))
    tampered["token"]["claims"]["hostname"] = "h1"
    status_of(post(env, "/v1/enroll", tampered, cert=None), 401, "tampered hostname")
    tampered = json.loads(json.dumps(fresh))
    sig = tampered["token"]["signature"]
    tampered["token"]["signature"] = ("B" if sig[0] == "A" else "A") + sig[1:]
    status_of(post(env, "/v1/enroll", tampered, cert=None), 401, "tampered signature")
    tampered["token"]["signature"] = "not base64!"
    status_of(post(env, "/v1/enroll", tampered, cert=None), 401, "garbage signature")

    # Bad JSON and bad shapes: 400.
    latin1 = env.dir / "latin1.json"
    latin1.write_bytes(b'{"hostname": "h\xe9"}')
    for name, raw in (
        ("not JSON", "{bad"),
        ("array", "[]"),
        ("empty", ""),
        ("missing fields", '{"hostname": "h1"}'),
        ("wrong type", json.dumps({**checkin, "uptimeSecs": "soon"})),
        ("duplicate key", '{"hostname": "h1", "hostname": "h1"}'),
        ("huge int", '{"hostname": "h1", "uptimeSecs": ' + "9" * 5000 + "}"),
        ("not UTF-8", "@" + str(latin1)),
    ):
        status_of(post(env, "/v1/agent/checkin", raw, cert=h1), 400, f"checkin: {name}")
    status_of(post(env, "/v1/enroll", "{bad", cert=None), 400, "enroll: not JSON")
    status_of(
        post(env, "/v1/enroll", {"token": fresh["token"], "csrPem": "junk"}, cert=None),
        400,
        "enroll: junk CSR",
    )
    status_of(post(env, "/v1/agent/renew", {"csrPem": "junk"}, cert=h1), 400, "renew: junk")
    status_of(post(env, "/v1/agent/confirm", {"hostname": "h1"}, cert=h1), 400, "confirm")
    big = env.dir / "deep.json"
    big.write_text("[" * 3000 + "]" * 3000)
    reply = post(env, "/v1/agent/checkin", "@" + str(big), cert=h1)
    status_of(reply, 400, "nested")
    assert "nested too deeply" in reply.json()["reason"]
    status, body = await aio_post(env, "/v1/agent/checkin", {"hostname": 1}, identity=h1)
    assert status == 400, body

    # Oversized bodies: 413 (--max-body-bytes), authenticated or not.
    big.write_text(json.dumps({**checkin, "pad": "x" * MAX_BODY}))
    status_of(post(env, "/v1/agent/checkin", "@" + str(big), cert=h1), 413, "oversized")
    status_of(post(env, "/v1/enroll", "@" + str(big), cert=None), 413, "oversized enroll")
    status, _ = await aio_post(env, "/v1/agent/report", {"pad": "x" * 100_000}, identity=h1)
    assert status == 413

    # Unknown routes and methods.
    status_of(curl(env.curl("/v1/nope", cert=h1)), 404, "unknown /v1 route")
    status_of(curl(env.curl("/nope")), 404, "unknown route")
    status_of(curl(env.curl("/v1/rollouts/" + "ab" * 32, cert=h1)), 404, "unknown rollout")
    status_of(curl(env.curl("/v1/channels/nope", cert=env.operator())), 404, "unknown channel")
    status_of(curl(env.curl("/v1/agent/checkin", cert=h1)), 405, "GET checkin")

    # The protocol header: another major 426, not an integer 400.
    status_of(
        curl(env.curl("/v1/whoami", "-H", "X-Nixfleet-Protocol: 2", cert=h1)), 426, "protocol 2"
    )
    status, _ = await aio_post(
        env, "/v1/agent/checkin", checkin, identity=h1, headers={"X-Nixfleet-Protocol": "2"}
    )
    assert status == 426
    status_of(
        curl(env.curl("/v1/whoami", "-H", "X-Nixfleet-Protocol: one", cert=h1)), 400, "protocol one"
    )

    # Still serving, nothing lost or added, no traceback.
    assert curl(env.curl("/v1/whoami", cert=h1)).status == 200
    assert table_counts(env.db_path) == before
    assert_clean_log(cp)
    assert cp.proc.poll() is None


def test_undeclared_agent_gets_no_target_and_no_renewal(env: CpEnv) -> None:
    """An agent cert for an undeclared host works for reads and gets no target."""
    stray: AgentCert = env.agent("stray")
    cp = env.start()
    reply = post(
        env, "/v1/agent/checkin", checkin_body("stray", fake_closure("stray", 0)), cert=stray
    )
    assert reply.status == 200 and reply.json()["target"] is None, reply
    status_of(
        post(env, "/v1/agent/renew", {"csrPem": enroll_body(env, "stray")["csrPem"]}, cert=stray),
        401,
        "renew undeclared",
    )
    assert_clean_log(cp)
