"""A spent bootstrap token offered again: 409, and the CP says so in its log, naming
whether the early check or the atomic record (the token_replay insert) caught it
(catalogue `harness-enroll-replay`: "token replay detected at record")."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest

from fleet_sim.fleetgen import HostDecl, ReleaseKit, ci_commit, fake_closure, fleet_doc
from harness.pki import Pki
from nixfleet.agent.csr import build_csr
from nixfleet.core import wire
from nixfleet.core.snapshot import SOURCE_UPSTREAM
from nixfleet.core.token import dump_token, mint_token
from nixfleet.core.trust import parse_trust
from nixfleet.cp.api import ApiError
from nixfleet.cp.issuance import load_fleet_ca
from nixfleet.cp.service import CpService, ServiceSettings
from nixfleet.cp.store import Store

NOW = datetime.now(UTC).replace(microsecond=0)
KIT = ReleaseKit()


@pytest.fixture
def service(tmp_path: Path) -> tuple[CpService, Pki]:
    pki = Pki.create(tmp_path / "pki", cn_suffix="fleet.test")
    key = pki.host_key("h1")
    hosts = {"h1": HostDecl(closure=fake_closure("h1", 1), pubkey=key.public_line)}
    raw, sig = KIT.sign(fleet_doc(hosts, signed_at=NOW, ci_commit=ci_commit(1)))
    trust = parse_trust(KIT.trust())
    ca = load_fleet_ca(pki.ca.cert.read_bytes(), pki.ca.key.read_bytes())
    svc = CpService(
        Store.open(":memory:"),
        lambda: trust,
        ServiceSettings(agent_cn_suffix="fleet.test"),
        fleet_ca=ca,
    )
    assert svc.offer_fleet(raw, sig, now=NOW, source=SOURCE_UPSTREAM)
    return svc, pki


def request(pki: Pki) -> wire.EnrollRequest:
    key = pki.host_key("h1")
    token = mint_token(
        hostname="h1",
        expected_pubkey_fingerprint=key.fingerprint,
        org_root_key=KIT.org_root_key,
        now=NOW - timedelta(minutes=1),
        nonce_bytes=os.urandom(16),
    )
    csr = build_csr(key.private_key.read_bytes(), "h1")
    return wire.EnrollRequest(token=dump_token(token), csr_pem=csr)


def refused_as_replay(
    svc: CpService, req: wire.EnrollRequest, caplog: pytest.LogCaptureFixture, *, at: str
) -> None:
    """`req` enrolled again: 409, logged as caught `at` the check or the record."""
    with pytest.raises(ApiError) as err:
        svc.enroll(req, now=NOW)
    assert err.value.http_status == 409
    assert f"token replay detected at {at} host=h1" in caplog.text


def test_replay_is_409_and_logged_at_the_check(
    service: tuple[CpService, Pki], caplog: pytest.LogCaptureFixture
) -> None:
    svc, pki = service
    req = request(pki)
    svc.enroll(req, now=NOW)
    refused_as_replay(svc, req, caplog, at="check")


def test_a_claim_lost_to_a_concurrent_enroll_is_409_at_the_record(
    service: tuple[CpService, Pki], caplog: pytest.LogCaptureFixture
) -> None:
    """Both requests passed the check; the atomic insert lets only the first through."""
    svc, pki = service
    req = request(pki)
    svc.enroll(req, now=NOW)
    assert svc.store is not None
    with mock.patch.object(svc.store, "nonce_used", return_value=False):
        refused_as_replay(svc, req, caplog, at="record")
