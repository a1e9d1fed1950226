"""Enrolment and renewal end to end against the real CP process, as a new host does
it (aiohttp, no client cert) and then as an enrolled agent (its new cert)."""

from __future__ import annotations

import json

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
    post,
    sqlite3,
)
from harness.pki import AgentCert
from nixfleet.agent.csr import build_csr


def agent_from(env: CpEnv, host: str, cert_pem: str, name: str = "enrolled.pem") -> AgentCert:
    """The issued cert on disk next to the host key, as the agent keeps it."""
    path = env.dir / host / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cert_pem)
    hk = env.pki.host_key(host)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return AgentCert(
        machine_id=host,
        cn=f"agent-{host}.fleet.test",
        cert=path,
        key=hk.tls_key,
        host_key=hk,
        not_after=cert.not_valid_after_utc,
    )


async def test_enroll_checkin_replay_and_renew(make_env: MakeEnv) -> None:
    env = make_env(declared("newhost", "h2"))
    env.publish()
    audit = env.dir / "audit.log"
    cp = env.start(env.args(audit_log=audit))

    body = enroll_body(env, "newhost")
    status, issued = await aio_post(env, "/v1/enroll", body)
    assert status == 200, issued
    cert = x509.load_pem_x509_certificate(issued["certPem"].encode())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "agent-newhost.fleet.test"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert issued["notAfter"].endswith("Z")
    cp.wait_log(r"enrolled host=newhost")

    # The issued cert works for checkin (aiohttp and curl) and dispatches the target.
    agent = agent_from(env, "newhost", issued["certPem"])
    status, reply = await aio_post(
        env,
        "/v1/agent/checkin",
        checkin_body("newhost", fake_closure("newhost", 0)),
        identity=agent,
    )
    assert status == 200, reply
    assert reply["target"]["closureHash"] == fake_closure("newhost", 1)
    whoami = curl(env.curl("/v1/whoami", cert=agent))
    assert whoami.status == 200 and whoami.json()["cn"] == "agent-newhost.fleet.test"

    # The same token again: 409, and the nonce is recorded once.
    status, reply = await aio_post(env, "/v1/enroll", body)
    assert status == 409, reply
    nonce = body["token"]["claims"]["nonce"]
    assert (
        sqlite3(env.db_path, f"SELECT hostname FROM token_replay WHERE nonce = '{nonce}';").strip()
        == "newhost"
    )

    # A host the fleet does not declare: 401.
    status, reply = await aio_post(env, "/v1/enroll", enroll_body(env, "ghost"))
    assert status == 401, reply
    assert "not declared" in reply["reason"]

    # A token and CSR for h2 bound to a key that is not h2's declared host key: 401.
    impostor = env.pki.host_key("impostor")
    status, reply = await aio_post(env, "/v1/enroll", enroll_body(env, "h2", host_key=impostor))
    assert status == 401, reply
    assert "declared SSH host key" in reply["reason"]

    # Renewal with the agent cert: 200, same CN, a newer cert that works.
    csr = build_csr(env.pki.host_key("newhost").private_key.read_bytes(), "newhost")
    status, renewed = await aio_post(env, "/v1/agent/renew", {"csrPem": csr}, identity=agent)
    assert status == 200, renewed
    new_cert = x509.load_pem_x509_certificate(renewed["certPem"].encode())
    assert new_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    renewed_agent = agent_from(env, "newhost", renewed["certPem"], "renewed.pem")
    assert curl(env.curl("/v1/whoami", cert=renewed_agent)).status == 200
    cp.wait_log(r"renewed host=newhost")

    # Renewing with another host's key is refused.
    other_csr = build_csr(env.pki.host_key("h2").private_key.read_bytes(), "newhost")
    status, reply = await aio_post(env, "/v1/agent/renew", {"csrPem": other_csr}, identity=agent)
    assert status == 401, reply

    lines = [json.loads(ln) for ln in audit.read_text().splitlines()]
    assert len(lines) == 2
    assert_clean_log(cp)


async def test_without_fleet_ca_enroll_500_checkin_works(make_env: MakeEnv) -> None:
    """Seed 001 pre-flight 3: the fleet CA is needed only for enroll and renew."""
    env = make_env(declared("h1", "newhost"))
    env.publish()
    h1 = env.agent("h1")  # an existing agent's cert
    cp = env.start(env.args(fleet_ca=False))
    assert "no fleet CA configured" in cp.log()

    body = enroll_body(env, "newhost")
    status, reply = await aio_post(env, "/v1/enroll", body)
    assert status == 500, reply
    assert "--fleet-ca-cert" in reply["reason"]
    # The token was not burnt: once the CA is back, the same token enrolls.
    assert sqlite3(env.db_path, "SELECT count(*) FROM token_replay;").strip() == "0"

    csr = build_csr(env.pki.host_key("h1").private_key.read_bytes(), "h1")
    status, reply = await aio_post(env, "/v1/agent/renew", {"csrPem": csr}, identity=h1)
    assert status == 500 and "--fleet-ca-cert" in reply["reason"], reply

    reply = post(env, "/v1/agent/checkin", checkin_body("h1", fake_closure("h1", 0)), cert=h1)
    assert reply.status == 200, reply
    assert reply.json()["target"]["closureHash"] == fake_closure("h1", 1)
    assert_clean_log(cp)
    cp.stop()

    cp = env.start()
    status, reply = await aio_post(env, "/v1/enroll", body)
    assert status == 200, reply
