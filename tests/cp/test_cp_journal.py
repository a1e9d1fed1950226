"""Issue 9 item 2: seed 001's wipe must never readmit anyone. Operator revocations (the
cookbook's hand INSERT, `nixfleet revoke`) and spent bootstrap nonces live on in the
operator journal beside state.db and are replayed at start, against the real CP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleet_sim.fleetgen import fake_closure
from harness.cpenv import (
    CpEnv,
    MakeEnv,
    aio_post,
    assert_clean_log,
    checkin_body,
    curl,
    declared,
    enroll_body,
    port_open,
    post,
    sh,
    sqlite3,
)
from harness.pki import AgentCert

# Seed 002's recipe, verbatim.
COOKBOOK_REVOKE = (
    "INSERT INTO cert_revocations (hostname, not_before, reason, revoked_by)\n"
    "VALUES ('newhost', datetime('now'), 'compromised', '<your-name>');"
)
REPLAYED = "cert_revocations: replayed from operator journal"


def wipe(env: CpEnv) -> None:
    """Seed 001, step 2 (the service is stopped)."""
    sh("rm -f state.db state.db-wal state.db-shm", cwd=env.state_dir)
    assert not list(env.state_dir.glob("state.db*"))


def journal(env: CpEnv) -> Path:
    return env.state_dir / "operator-journal.jsonl"


def old_cert(env: CpEnv, host: str = "newhost") -> AgentCert:
    """The host's existing cert, issued before any revocation's cut-off."""
    return env.pki.issue_agent(host, now=datetime.now(UTC) - timedelta(minutes=5))


def status(env: CpEnv, cert: AgentCert) -> int:
    body = checkin_body(cert.machine_id, fake_closure(cert.machine_id, 0))
    return post(env, "/v1/agent/checkin", body, cert=cert).status


def nixfleet(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nixfleet.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cookbook_revocation_survives_the_wipe(make_env: MakeEnv) -> None:
    env = make_env(declared("newhost", "other"))
    env.publish()
    cert, other = old_cert(env), env.agent("other")
    cp = env.start()
    assert status(env, cert) == 200

    sqlite3(env.db_path, COOKBOOK_REVOKE)
    assert status(env, cert) == 401  # at once, as before
    # The periodic scan journals the hand-inserted row; a crash then loses nothing.
    cp.wait_log(r"operator journal: revocation journaled .*host=newhost")
    cp.kill9()
    wipe(env)
    cp = env.start()

    assert status(env, cert) == 401
    assert curl(env.curl("/v1/whoami", cert=cert)).status == 401
    line = cp.wait_log(REPLAYED)
    assert "revocations=1 nonces=0" in line and str(journal(env)) in line
    # Seed 001's verify step finds it.
    assert REPLAYED in sh(f"grep -E 'revocations poll|cert_revocations' {cp.log_path}")
    assert status(env, other) == 200
    row = sqlite3(env.db_path, "SELECT reason, revoked_by, source FROM cert_revocations;").strip()
    assert row == "compromised|<your-name>|operator"
    # The replay is idempotent: a restart without a wipe writes nothing new.
    size = journal(env).stat().st_size
    assert cp.stop() == 0
    cp = env.start()
    assert cp.wait_log(REPLAYED).endswith(f"revocations=0 nonces=0 path={journal(env)}")
    assert status(env, cert) == 401
    assert journal(env).stat().st_size == size
    assert_clean_log(cp)


def test_revocation_inserted_just_before_a_runbook_stop_survives(make_env: MakeEnv) -> None:
    env = make_env(declared("newhost"))
    env.publish()
    env.extra_args += ["--tick-interval-secs", "600"]  # no scan before the stop
    cert = old_cert(env)
    cp = env.start()
    sqlite3(env.db_path, COOKBOOK_REVOKE)
    assert cp.stop(signal.SIGTERM) == 0  # seed 001 step 1
    wipe(env)
    cp = env.start()
    assert status(env, cert) == 401


async def test_spent_token_stays_spent_after_the_wipe(make_env: MakeEnv) -> None:
    env = make_env(declared("newhost"))
    env.publish()
    cp = env.start()
    body = enroll_body(env, "newhost")
    code, _ = await aio_post(env, "/v1/enroll", body)
    assert code == 200
    cp.kill9()  # journaled before the answer, not at some later scan
    wipe(env)
    cp = env.start()
    code, reply = await aio_post(env, "/v1/enroll", body)
    assert code == 409, reply
    assert "revocations=0 nonces=1" in cp.wait_log(REPLAYED)
    # A fresh token still enrolls.
    code, reply = await aio_post(env, "/v1/enroll", enroll_body(env, "newhost"))
    assert code == 200, reply
    assert_clean_log(cp)


async def test_unwritable_journal_refuses_enrollment_without_spending_the_token(
    make_env: MakeEnv,
) -> None:
    env = make_env(declared("newhost"))
    env.publish()
    cp = env.start()
    journal(env).mkdir()  # appends now fail
    body = enroll_body(env, "newhost")
    for _ in range(2):
        code, reply = await aio_post(env, "/v1/enroll", body)
        assert code == 503, reply
    assert len(cp.lines("operator journal: cannot write")) == 1  # once, not per request
    assert sqlite3(env.db_path, "SELECT count(*) FROM token_replay;").strip() == "0"
    journal(env).rmdir()
    code, reply = await aio_post(env, "/v1/enroll", body)
    assert code == 200, reply
    cp.wait_log("operator journal: writable again")
    assert_clean_log(cp)


def test_nixfleet_revoke_cli(make_env: MakeEnv) -> None:
    env = make_env(declared("newhost", "other"))
    env.publish()
    cert, other = old_cert(env), old_cert(env, "other")
    db = str(env.db_path)

    # Clear one-line errors.
    res = nixfleet("revoke", "newhost", "--reason", "x", "--db-path", db)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, res.stderr
    assert "no state DB" in res.stderr
    cp = env.start()
    res = nixfleet("revoke", "bad host\n", "--reason", "x", "--db-path", db)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, res.stderr
    assert "Traceback" not in res.stderr

    # While the CP runs: effective at once.
    res = nixfleet("revoke", "newhost", "--reason", "compromised", "--by", "me", "--db-path", db)
    assert res.returncode == 0, res.stderr
    assert status(env, cert) == 401
    row = sqlite3(env.db_path, "SELECT reason, revoked_by, source FROM cert_revocations;")
    assert row.strip() == "compromised|me|operator"

    # While it is stopped, then wiped before it ever saw the row: the CLI journaled it.
    assert cp.stop() == 0
    res = nixfleet("revoke", "other", "--reason", "lost", "--db-path", db)
    assert res.returncode == 0, res.stderr
    wipe(env)
    cp = env.start()
    assert status(env, cert) == 401
    assert status(env, other) == 401
    assert "revocations=2" in cp.wait_log(REPLAYED)

    # Un-revoking goes through the journal too, or the next wipe would revoke again.
    res = nixfleet("revoke", "other", "--undo", "--db-path", db)
    assert res.returncode == 0, res.stderr
    assert status(env, other) == 200
    assert cp.stop() == 0
    wipe(env)
    cp = env.start()
    assert status(env, other) == 200
    assert status(env, cert) == 401
    assert "revocations=1" in cp.wait_log(REPLAYED)
    assert_clean_log(cp)


def test_deleting_the_row_while_running_unrevokes_for_good(make_env: MakeEnv) -> None:
    env = make_env(declared("newhost"))
    env.publish()
    cert = old_cert(env)
    cp = env.start()
    sqlite3(env.db_path, COOKBOOK_REVOKE)
    cp.wait_log(r"operator journal: revocation journaled .*host=newhost")
    sqlite3(env.db_path, "DELETE FROM cert_revocations WHERE hostname = 'newhost';")
    assert status(env, cert) == 200
    cp.wait_log(r"operator journal: un-revocation journaled .*host=newhost")
    assert cp.stop() == 0
    wipe(env)
    cp = env.start()
    assert status(env, cert) == 200
    assert "revocations=0" in cp.wait_log(REPLAYED)


def test_corrupt_journal_line_is_skipped(make_env: MakeEnv) -> None:
    env = make_env(declared("newhost"))
    env.publish()
    cert = old_cert(env)
    env.state_dir.mkdir(parents=True, exist_ok=True)
    entry = {
        "v": 1,
        "kind": "revoke",
        "hostname": "newhost",
        "not_before": datetime.now(UTC).isoformat(),
        "reason": "compromised",
        "revoked_by": "me",
        "revoked_at": datetime.now(UTC).isoformat(),
    }
    journal(env).write_text(
        json.dumps(entry) + "\n" + "not json\n" + '{"v": 1, "kind": "nonce", "non'
    )
    cp = env.start()
    warnings = cp.lines("operator journal: skipping corrupt line")
    assert [w.split("operator journal: ")[1].split(" (")[0] for w in warnings] == [
        f"skipping corrupt line path={journal(env)} line=2",
        f"skipping corrupt line path={journal(env)} line=3",
    ]
    assert "revocations=1 nonces=0" in cp.wait_log(REPLAYED)
    assert status(env, cert) == 401
    # The torn last line does not swallow the next entry.
    sqlite3(env.db_path, COOKBOOK_REVOKE.replace("'newhost'", "'h2'"))
    cp.wait_log(r"operator journal: revocation journaled .*host=h2")
    assert json.loads(journal(env).read_text().splitlines()[-1])["hostname"] == "h2"
    assert_clean_log(cp)


def test_unreadable_journal_refuses_to_start(make_env: MakeEnv) -> None:
    env = make_env(declared("newhost"))
    env.publish()
    journal(env).mkdir(parents=True)  # a directory where the file should be
    cp = env.start(wait=False)
    assert cp.proc.wait(30) != 0
    lines = [ln for ln in cp.log().splitlines() if ln.strip()]
    assert lines and "operator journal" in lines[-1] and str(journal(env)) in lines[-1]
    assert "Traceback" not in cp.log()
    assert not port_open(env.port)


def test_journal_disabled_warns(make_env: MakeEnv) -> None:
    env = make_env(declared("newhost"))
    env.publish()
    cp = env.start([*env.args(), "--operator-journal", "none"])
    cp.wait_log("operator journal disabled")
    assert not journal(env).exists()
