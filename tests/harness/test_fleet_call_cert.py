"""`Fleet.call` as a host outside the fleet, and with a given certificate PEM."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from harness.backends import local, sim
from harness.enrollsteps import enroll
from harness.fleet import Shape

SHAPE = Shape(hosts=2, local_hosts=1, seed=7)


def pem_for(cn: str, not_before: datetime) -> str:
    """A self-signed cert: the simulated TLS layer reads only its CN and notBefore."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(not_before)
        .not_valid_after(not_before + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM).decode()


def test_sim_stray_host_and_given_cert() -> None:
    with sim.open_fleet(SHAPE, Path("."), None) as fleet:
        stray = fleet.call("GET", "/v1/whoami", as_="stray")
        assert stray.status == 200 and stray.json()["cn"].startswith("agent-stray."), stray.line()
        host = fleet.hosts[0]
        cn = f"agent-{host}.fleet.sim"
        given = fleet.call("GET", "/v1/whoami", as_=host, cert=pem_for(cn, datetime.now(UTC)))
        assert given.status == 200 and given.json()["cn"] == cn


@pytest.mark.slow
def test_local_stray_host_and_enrolled_cert(tmp_path: Path) -> None:
    with local.open_fleet(SHAPE, tmp_path, None) as fleet:
        stray = fleet.call("GET", "/v1/whoami", as_="stray")
        assert stray.status == 200 and stray.json()["cn"].startswith("agent-stray."), stray.line()
        host = fleet.hosts[0]
        issued = enroll(fleet, host, fleet.mint_token(host))
        assert issued.status == 200, issued.line()
        pem = issued.json()["certPem"]
        given = fleet.call("GET", "/v1/whoami", as_=host, cert=pem)
        assert given.status == 200 and given.json()["cn"].startswith(f"agent-{host}.")
