"""`Fleet.expire_cert` and `Fleet.deploy_token`: a host back from a long power-off with
an expired certificate, and the fresh bootstrap token an operator deploys to it. Real
files on `local`, NotAvailable on `sim` (its hosts hold no certificate files)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from harness.backends import local, sim
from harness.fleet import NotAvailable, Shape


def test_sim_has_no_certificate_files() -> None:
    with sim.open_fleet(Shape(hosts=2, seed=5), Path("."), None) as fleet:
        host = fleet.hosts[0]
        with pytest.raises(NotAvailable, match="certificate files"):
            fleet.expire_cert(host)
        with pytest.raises(NotAvailable, match="/v1/enroll"):
            fleet.deploy_token(host, {})


@pytest.mark.slow
def test_local_expired_cert_and_deployed_token(tmp_path: Path) -> None:
    with local.open_fleet(Shape(local_hosts=1, seed=5), tmp_path, None) as fleet:
        host = fleet.hosts[0]
        with pytest.raises(RuntimeError, match="stop h1's agent"):
            fleet.expire_cert(host)
        fleet.kill_agent(host)
        fleet.expire_cert(host)
        h = fleet.local.host(host)
        cert = x509.load_pem_x509_certificate(h.client_cert.read_bytes())
        assert cert.not_valid_after_utc < datetime.now(UTC)
        assert fleet.call("GET", "/v1/whoami", as_=host).status == 0  # dropped at TLS
        token = fleet.mint_token(host)
        fleet.deploy_token(host, token)
        assert json.loads(h.token_file.read_text()) == token
