"""An agent whose client certificate expired (seed 001 "Agents don't reconnect").

The CP's TLS layer drops an expired certificate without a reason the agent can read
(a reset), and renewal needs a valid one: the agent names the cause on each checkin
and re-enrols with its bootstrap token, read afresh, so a new one the operator deploys
gets it back without touching the certificate file.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from agent_testlib import AgentProc, Host, start_agent

from fleet_sim.fleetgen import fake_closure
from harness.cpenv import CpEnv, declared
from harness.pki import Pki
from nixfleet.agent.enroll import Identity
from nixfleet.core.errors import PeerError
from nixfleet.core.hostkey import load_host_private_key
from nixfleet.core.token import dump_token, mint_token
from nixfleet.core.wire import CertIssued, EnrollRequest, RenewRequest

LONG_AGO = timedelta(days=3)


def expired_cert(pki: Pki, name: str) -> Any:
    """A certificate the fleet CA issued three days ago, valid for a minute."""
    return pki.issue_agent(name, validity_secs=60, now=datetime.now(UTC) - LONG_AGO)


def write_token(pki: Pki, org_root_key: Any, name: str, path: Path) -> Path:
    token = mint_token(
        hostname=name,
        expected_pubkey_fingerprint=pki.host_key(name).fingerprint,
        org_root_key=org_root_key,
        now=datetime.now(UTC),
        nonce_bytes=secrets.token_bytes(16),
    )
    path.write_text(json.dumps(dump_token(token)))
    return path


# --- in process: Identity against a scripted CA ------------------------------------------


class ScriptedCa:
    """Answers `/v1/enroll` with `answer` (a certificate PEM or an exception)."""

    def __init__(self, answer: str | Exception) -> None:
        self.answer = answer
        self.enrolled: list[EnrollRequest] = []

    async def enroll(self, req: EnrollRequest) -> CertIssued:
        self.enrolled.append(req)
        if isinstance(self.answer, Exception):
            raise self.answer
        return CertIssued(cert_pem=self.answer, not_after=datetime.now(UTC))

    async def renew(self, req: RenewRequest) -> CertIssued:
        raise AssertionError("an expired certificate is not renewed")

    def set_identity(self, cert: Path, key_pem: bytes) -> None:
        pass


def identity(pki: Pki, tmp_path: Path, ca: ScriptedCa, token: Path | None) -> Identity:
    hk = pki.host_key("h1")
    cert = tmp_path / "agent-cert.pem"
    cert.write_text(expired_cert(pki, "h1").cert.read_text())
    ident = Identity(
        ca=ca,
        cert_path=cert,
        key=load_host_private_key(hk.private_key.read_bytes(), source="test"),
        key_pem=hk.tls_key.read_bytes(),
        machine_id="h1",
        token_path=token,
        renewal_fraction=0.5,
        retry_base_secs=1,
    )
    assert ident.load()
    return ident


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path / "pki")


def test_a_valid_certificate_is_left_alone(pki: Pki, tmp_path: Path) -> None:
    ca = ScriptedCa(PeerError("unused"))
    ident = identity(pki, tmp_path, ca, None)
    assert ident.info is not None
    assert asyncio.run(ident.reenroll_if_expired(ident.info.not_after - timedelta(1))) is None
    assert ca.enrolled == []


def test_expired_without_a_token_names_the_cause(pki: Pki, tmp_path: Path) -> None:
    ident = identity(pki, tmp_path, ScriptedCa(PeerError("unused")), None)
    why = asyncio.run(ident.reenroll_if_expired(datetime.now(UTC)))
    assert why is not None and "agent-cert.pem expired at " in why
    assert why.endswith("no --bootstrap-token-file to re-enrol with")


def test_a_refused_reenrolment_says_why(pki: Pki, tmp_path: Path) -> None:
    token = tmp_path / "token.json"
    refusal = PeerError("enroll: https://cp/v1/enroll (HTTP 409: conflict: nonce replayed)")
    ident = identity(pki, tmp_path, ScriptedCa(refusal), token)
    why = asyncio.run(ident.reenroll_if_expired(datetime.now(UTC)))
    assert why is not None and "expired at " in why and "cannot read bootstrap token" in why
    write_token(pki, some_org_key(), "h1", token)
    why = asyncio.run(ident.reenroll_if_expired(datetime.now(UTC)))
    assert why is not None and why.endswith(f"{token} failed: {refusal}")


def test_a_fresh_token_reenrols(pki: Pki, tmp_path: Path) -> None:
    fresh = pki.issue_agent("h1").cert.read_text()
    ca = ScriptedCa(fresh)
    token = write_token(pki, some_org_key(), "h1", tmp_path / "token.json")
    ident = identity(pki, tmp_path, ca, token)
    assert asyncio.run(ident.reenroll_if_expired(datetime.now(UTC))) is None
    assert len(ca.enrolled) == 1
    assert (tmp_path / "agent-cert.pem").read_text() == fresh
    assert ident.info is not None and ident.info.not_after > datetime.now(UTC)


def some_org_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


# --- the agent process against a real CP --------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> Iterator[CpEnv]:
    made = CpEnv.create(tmp_path / "cp", declared("h1"))
    yield made
    made.close()


def test_expired_certificate_named_then_reenrolled(env: CpEnv, agents: list[AgentProc]) -> None:
    env.publish()
    cp = env.start()
    host = Host(dir=env.dir.parent / "host-h1", name="h1")
    host.dir.mkdir(parents=True)
    os.symlink(f"/nix/store/{fake_closure('h1', 1)}", host.link)
    host.cert = expired_cert(env.pki, "h1")
    token = host.dir / "token.json"  # not deployed yet
    argv = host.agent_args(cp_url=env.url(""), pki=env.pki, trust=env.trust_path, poll=1,
                           extra=("--bootstrap-token-file", str(token)))  # fmt: skip
    agent = start_agent(argv, dict(os.environ), host.dir / "agent.log")
    agents.append(agent)
    agent.wait_log("checkin failed reason=client certificate ")
    line = next(ln for ln in agent.log().splitlines() if "checkin failed" in ln)
    assert "expired at " in line and "cannot read bootstrap token" in line
    # The operator deploys a fresh token; the running agent picks it up.
    write_token(env.pki, env.kit.org_root_key, "h1", token)
    agent.wait_log("re-enrolled after expiry cn=agent-h1.fleet.test", timeout=30)
    agent.wait_log("checkin ok")
    assert cp.lines("enrolled host=h1")
    assert "Traceback" not in agent.log()
