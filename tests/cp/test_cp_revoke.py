"""Seed 002 (operator cookbook) against the real CP process: the revoke INSERT and the
stuck-agent SELECT, run with the `sqlite3` shell exactly as written."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

from fleet_sim.fleetgen import fake_closure
from harness.cpenv import (
    MakeEnv,
    assert_clean_log,
    checkin_body,
    count_lines,
    curl,
    declared,
    post,
    sqlite3,
    wait_more_lines,
    wait_until,
)
from harness.pki import AgentCert
from nixfleet.core.timeutil import parse_instant

REVOKE = (
    "INSERT INTO cert_revocations (hostname, not_before, reason, revoked_by) "
    "VALUES ('newhost', datetime('now'), 'compromised', 'me');"
)
STUCK = (
    "SELECT id, rollout_id, state, datetime(dispatched_at), datetime(confirmed_at) "
    'FROM pending_confirms WHERE hostname = "h" ORDER BY id DESC LIMIT 5;'
)


def test_seed_002_revoke_a_hosts_cert(make_env: MakeEnv) -> None:
    env = make_env(declared("newhost", "other"))
    env.publish()
    # The sidecar revokes someone else; the hand-inserted row must survive its replay.
    env.publish_revocations({"oldhost": datetime.now(UTC)})
    # newhost's existing cert, issued a while ago.
    old = env.pki.issue_agent("newhost", now=datetime.now(UTC) - timedelta(minutes=5))
    old_cert = env.dir / "newhost-old.pem"
    shutil.copy(old.cert, old_cert)
    old = AgentCert(
        machine_id=old.machine_id,
        cn=old.cn,
        cert=old_cert,
        key=old.key,
        host_key=old.host_key,
        not_after=old.not_after,
    )
    other = env.agent("other")
    cp = env.start(env.args(revocations=True))
    body = checkin_body("newhost", fake_closure("newhost", 0))

    assert post(env, "/v1/agent/checkin", body, cert=old).status == 200
    assert curl(env.curl("/v1/whoami", cert=old)).status == 200

    sqlite3(env.db_path, REVOKE)

    # The very next /v1/* call with the existing cert: 401, not 500.
    reply = post(env, "/v1/agent/checkin", body, cert=old)
    assert reply.status == 401, reply
    assert "revoked" in reply.json()["reason"]
    for path in ("/v1/whoami", "/v1/hosts", "/v1/channels/stable"):
        assert curl(env.curl(path, cert=old)).status == 401, path
    assert curl(env.curl("/v1/whoami", cert=other)).status == 200  # others unaffected
    cp.wait_log("rejecting revoked cert")

    # The row survives the next signed-sidecar replay.
    wait_more_lines(cp, "revocations poll", count_lines(cp, "revocations poll"))
    rows = sqlite3(
        env.db_path,
        "SELECT hostname, reason, revoked_by, source FROM cert_revocations ORDER BY hostname;",
    )
    assert rows.splitlines() == ["newhost|compromised|me|operator", "oldhost|test|ci|sidecar"]
    assert curl(env.curl("/v1/whoami", cert=old)).status == 401

    # A cert issued after the cut-off (re-enrolment) passes.
    cut = parse_instant(
        sqlite3(
            env.db_path, "SELECT not_before FROM cert_revocations WHERE hostname = 'newhost';"
        ).strip()
    )
    wait_until(lambda: datetime.now(UTC).replace(microsecond=0) > cut, 5, "clock past cut-off")
    fresh = env.pki.issue_agent("newhost")
    assert post(env, "/v1/agent/checkin", body, cert=fresh).status == 200
    assert curl(env.curl("/v1/whoami", cert=old)).status == 401
    assert_clean_log(cp)


def test_seed_002_stuck_agent_query_shows_dispatches(make_env: MakeEnv) -> None:
    env = make_env(declared("h"))
    env.publish()
    cert = env.agent("h")
    cp = env.start()
    body = checkin_body("h", fake_closure("h", 0))

    first = post(env, "/v1/agent/checkin", body, cert=cert).json()["target"]
    assert first["closureHash"] == fake_closure("h", 1)
    # The agent never confirms: the rollback timer expires the row (its deadline moved
    # into the past by hand rather than waiting out the shortest window, 30 s), the next
    # checkin dispatches again (what a ghost loop looks like in the table).
    sqlite3(env.db_path, "UPDATE pending_confirms SET confirm_deadline = '2000-01-01T00:00:00Z';")
    cp.wait_log(r"rolling back: confirm window expired .*host=h\b")
    second = post(env, "/v1/agent/checkin", body, cert=cert).json()["target"]
    assert second["rolloutId"] == first["rolloutId"]
    confirm = {
        "hostname": "h",
        "rollout": second["rolloutId"],
        "wave": 0,
        "generation": {"closureHash": second["closureHash"], "bootId": "b2"},
    }
    assert post(env, "/v1/agent/confirm", confirm, cert=cert).status == 204

    rows = [line.split("|") for line in sqlite3(env.db_path, STUCK).splitlines()]
    assert [r[0] for r in rows] == ["2", "1"]
    assert {r[1] for r in rows} == {first["rolloutId"]}
    assert [r[2] for r in rows] == ["confirmed", "rolled-back"]
    for r in rows:
        datetime.strptime(r[3], "%Y-%m-%d %H:%M:%S")  # datetime() normalised it
    datetime.strptime(rows[0][4], "%Y-%m-%d %H:%M:%S")
    assert rows[1][4] == ""
    assert_clean_log(cp)
