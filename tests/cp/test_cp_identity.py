"""Identity against the real CP process: hostile identifiers are refused at the wire
and never reach the DB or the log (issue 9 item 4), and agent and operator
certificates each reach only their own routes (item 5), including an operator cert
made by `nixfleet mint-operator-cert`."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from fleet_sim.fleetgen import fake_closure
from harness.cpenv import (
    CpEnv,
    MakeEnv,
    Reply,
    assert_clean_log,
    checkin_body,
    confirm_body,
    curl,
    declared,
    post,
    sh,
    table_counts,
)
from harness.pki import CertPaths

NIXFLEET = Path(sys.executable).with_name("nixfleet")
HASH32 = "0123456789abcdfghijklmnpqrsvwxyz"
# A value that, written raw, would add a `checkin received` line naming another host.
FORGED = "\n2026-01-01T00:00:00.000Z INFO nixfleet.cp: checkin received closure_hash=x from victim"


def refused(reply: Reply, status: int, what: str) -> str:
    assert reply.status == status, f"{what}: {reply}"
    body = reply.json()
    assert set(body) == {"error", "reason"} and "\n" not in body["reason"], f"{what}: {body}"
    assert len(body["reason"]) < 600, f"{what}: reason echoes the value"
    reason: str = body["reason"]
    return reason


def checked_in_hosts(cp_log: Path) -> list[str]:
    """Seed 001's verify step, verbatim."""
    return sh(f"grep 'checkin received' {cp_log} | awk '{{print $NF}}'").split()


def test_hostile_identifiers_are_refused_and_never_logged(make_env: MakeEnv) -> None:
    env = make_env(declared("h1", "victim"))
    env.publish()
    h1 = env.agent("h1")
    cp = env.start()
    real = fake_closure("h1", 0)
    reply = post(env, "/v1/agent/checkin", checkin_body("h1", real), cert=h1)
    assert reply.status == 200, reply
    rid = reply.json()["target"]["rolloutId"]
    before = table_counts(env.db_path)

    def generation(closure: str) -> dict[str, Any]:
        return {"closureHash": closure, "bootId": "b"}

    report = {
        "hostname": "h1",
        "agentVersion": "t",
        "occurredAt": "2026-01-01T00:00:00Z",
        "rollout": rid,
        "event": "rollback-triggered",
        "details": {"reason": "r"},
    }
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        (
            "path traversal",
            "/v1/agent/checkin",
            checkin_body("h1", "../../etc/passwd"),
            "currentGeneration.closureHash",
        ),
        (
            "100 KB closure",
            "/v1/agent/checkin",
            checkin_body("h1", f"{HASH32}-" + "x" * 100_000),
            "currentGeneration.closureHash",
        ),
        (
            "forged line in closure",
            "/v1/agent/checkin",
            checkin_body("h1", real + FORGED),
            "currentGeneration.closureHash",
        ),
        (
            "forged line in pending closure",
            "/v1/agent/checkin",
            checkin_body("h1", real, pendingGeneration={"closureHash": real + FORGED}),
            "pendingGeneration.closureHash",
        ),
        (
            "forged line in hostname",
            "/v1/agent/checkin",
            checkin_body("h1" + FORGED, real),
            "hostname",
        ),
        ("traversal in hostname", "/v1/agent/checkin", checkin_body("../h1", real), "hostname"),
        (
            "forged line in boot id",
            "/v1/agent/checkin",
            checkin_body("h1", real, currentGeneration={**generation(real), "bootId": FORGED}),
            "currentGeneration.bootId",
        ),
        (
            "confirm closure",
            "/v1/agent/confirm",
            {**confirm_body("h1", rid, real), "generation": generation("../../etc/passwd")},
            "generation.closureHash",
        ),
        (
            "confirm rollout",
            "/v1/agent/confirm",
            confirm_body("h1", "../" + rid, real),
            "rollout",
        ),
        (
            "confirm hostname",
            "/v1/agent/confirm",
            confirm_body("h1" + FORGED, rid, real),
            "hostname",
        ),
        ("report hostname", "/v1/agent/report", {**report, "hostname": "h1" + FORGED}, "hostname"),
        ("report event", "/v1/agent/report", {**report, "event": "e" + FORGED}, "event"),
        ("report rollout", "/v1/agent/report", {**report, "rollout": "r" * 100_000}, "rollout"),
    ]
    for what, path, body, field in cases:
        reason = refused(post(env, path, body, cert=h1), 400, what)
        assert f": {field}: " in reason, f"{what}: {reason}"

    # Nothing was stored or served; the log names only the host that checked in.
    assert table_counts(env.db_path) == before
    hosts = curl(env.curl("/v1/hosts", cert=env.operator())).json()["hosts"]
    assert [(h["hostname"], h["currentClosureHash"]) for h in hosts] == [
        ("h1", real),
        ("victim", None),
    ]
    assert checked_in_hosts(cp.log_path) == ["h1"]
    assert "victim" not in cp.log()
    assert_clean_log(cp)


def test_roles_agent_and_operator(make_env: MakeEnv) -> None:
    env = make_env(declared("h1", "h2"))
    env.publish()
    h1, op = env.agent("h1"), env.operator()
    cp = env.start()

    # An agent: its own checkin, the manifest it verifies, whoami.
    reply = post(env, "/v1/agent/checkin", checkin_body("h1", fake_closure("h1", 0)), cert=h1)
    assert reply.status == 200, reply
    rid = reply.json()["target"]["rolloutId"]
    for path in ("/v1/whoami", f"/v1/rollouts/{rid}", f"/v1/rollouts/{rid}/sig"):
        assert curl(env.curl(path, "-o", "/dev/null", cert=h1)).status == 200, path
    # ... never another host's, nor a fleet-wide read.
    refused(
        post(env, "/v1/agent/checkin", checkin_body("h2", fake_closure("h2", 0)), cert=h1),
        403,
        "h1 checking in as h2",
    )
    for path in ("/v1/hosts", "/v1/rollouts", "/metrics", "/v1/channels/stable"):
        reason = refused(curl(env.curl(path, cert=h1)), 403, f"agent GET {path}")
        assert "operator certificate" in reason, reason

    # An operator: every fleet-wide read (seed 001 reads the channel with its pair) ...
    before = table_counts(env.db_path)
    for path in ("/v1/hosts", "/v1/rollouts", "/metrics", "/v1/channels/stable", "/v1/whoami"):
        assert curl(env.curl(path, cert=op)).status == 200, path
    assert curl(env.curl(f"/v1/rollouts/{rid}", cert=op)).status == 200
    # ... but it never speaks for a host.
    for path, body in (
        ("/v1/agent/checkin", checkin_body("h2", fake_closure("h2", 0))),
        ("/v1/agent/checkin", checkin_body(op.cn, fake_closure("h2", 0))),
        ("/v1/agent/confirm", confirm_body("h1", rid, fake_closure("h1", 1))),
        ("/v1/agent/report", {"hostname": "h1"}),
        ("/v1/agent/renew", {"csrPem": "x"}),
    ):
        reason = refused(post(env, path, body, cert=op), 403, f"operator POST {path}")
        assert "agent certificates" in reason, reason
    assert table_counts(env.db_path) == before
    assert checked_in_hosts(cp.log_path) == ["h1"]
    assert_clean_log(cp)


def mint(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NIXFLEET), "mint-operator-cert", *args], capture_output=True, text=True, timeout=30
    )


def test_mint_operator_cert_works_against_a_live_cp(make_env: MakeEnv) -> None:
    env: CpEnv = make_env(declared("h1"))
    env.publish()
    cp = env.start()
    out = env.dir / "op"
    out.mkdir()
    cert, key = out / "alice.pem", out / "alice-key.pem"
    ca = ["--root-cert", str(env.pki.ca.cert), "--root-key", str(env.pki.ca.key)]
    files = ["--output-cert", str(cert), "--output-key", str(key)]

    res = mint(*ca, "--user", "alice", "--host", "laptop", *files)
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    cn = loaded.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "operator-alice@laptop"
    alice = CertPaths(cert=cert, key=key, cn=str(cn))
    assert curl(env.curl("/v1/hosts", cert=alice)).status == 200
    assert curl(env.curl("/v1/whoami", cert=alice)).json()["cn"] == "operator-alice@laptop"
    refused(
        post(env, "/v1/agent/checkin", checkin_body("h1", fake_closure("h1", 0)), cert=alice),
        403,
        "minted operator checks in",
    )

    # Never overwritten without --force; with it, a new key and certificate.
    old = cert.read_bytes(), key.read_bytes()
    res = mint(*ca, "--user", "alice", "--host", "laptop", *files)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res
    assert "exists (use --force to overwrite)" in res.stderr
    assert (cert.read_bytes(), key.read_bytes()) == old
    res = mint(*ca, "--cn", "operator-bob@desk", *files, "--force")
    assert res.returncode == 0, res.stderr
    assert (cert.read_bytes(), key.read_bytes()) != old
    bob = CertPaths(cert=cert, key=key, cn="operator-bob@desk")
    assert curl(env.curl("/v1/whoami", cert=bob)).json()["cn"] == "operator-bob@desk"

    # The default host is this machine's name.
    res = mint(
        *ca, "--user", "carol", "--output-cert", str(out / "c.pem"), "--output-key", str(out / "k")
    )
    assert res.returncode == 0, res.stderr
    assert "CN operator-carol@" in res.stderr

    # User errors: one line, exit 2, nothing written.
    root_cert = ["--root-cert", str(env.pki.ca.cert), *files, "--force"]
    for args, message in (
        ([*ca, "--cn", "bob", *files, "--force"], "is not operator-<user>@<host>"),
        ([*ca, "--user", "a b", *files, "--force"], "is not a user name"),
        ([*ca, "--user", "a", "--host=a..b", *files, "--force"], "is not a host name"),
        ([*ca, "--cn", "operator-a@b", "--host", "c", *files], "--host goes with --user"),
        (
            [*root_cert, "--root-key", str(env.pki.server.key), "--user", "a"],
            "does not match the fleet CA certificate",
        ),
        ([*root_cert, "--root-key", str(out / "nope"), "--user", "a"], "cannot read fleet CA key"),
    ):
        res = mint(*args)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, (args, res)
        assert message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert curl(env.curl("/v1/whoami", cert=bob)).json()["cn"] == "operator-bob@desk"
    assert_clean_log(cp)
