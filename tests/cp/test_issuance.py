"""The fleet CA signer (protocol §1.3, §2.8, §3.4) and the agent's CSR."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from nixfleet.agent.csr import build_csr, build_csr_for_key, tls_key_pem
from nixfleet.core.errors import BadInput
from nixfleet.core.hostkey import fingerprint, public_key_of
from nixfleet.core.timeutil import format_instant
from nixfleet.cp.issuance import (
    Csr,
    FleetCa,
    Role,
    audit_line,
    enroll_context,
    extract_machine_id,
    issue_agent_cert,
    load_fleet_ca,
    operator_cn,
    parse_csr,
    renew_context,
    role_of,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
SUFFIX = "fleet.test"

CaPrivate = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def make_ca_cert(key: CaPrivate, cn: str = "test fleet CA") -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, algo)
    )


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pkcs8(key: CaPrivate | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def ca_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ca(ca_key: ec.EllipticCurvePrivateKey) -> FleetCa:
    return load_fleet_ca(pem(make_ca_cert(ca_key)), pkcs8(ca_key))


@pytest.fixture(scope="module")
def host_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def openssh(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def csr_with(
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    subject: list[x509.NameAttribute[str]],
) -> str:
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    req = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject)).sign(key, algo)
    return req.public_bytes(serialization.Encoding.PEM).decode()


def raw(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def issue(ca: FleetCa, host_key: ed25519.Ed25519PrivateKey, **kw: int) -> x509.Certificate:
    csr = parse_csr(build_csr(openssh(host_key), "web-01"))
    cert_pem, _ = issue_agent_cert(ca, csr, "web-01", SUFFIX, NOW, **kw)
    return x509.load_pem_x509_certificate(cert_pem.encode())


# --- the issued certificate ------------------------------------------------------------


def test_issued_cert_has_the_exact_shape(ca: FleetCa, host_key: ed25519.Ed25519PrivateKey) -> None:
    csr = parse_csr(build_csr(openssh(host_key), "web-01"))
    cert_pem, not_after = issue_agent_cert(ca, csr, "web-01", SUFFIX, NOW)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())

    assert cert.subject == x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "agent-web-01.fleet.test")]
    )
    assert cert.issuer == ca.cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName("agent-web-01.fleet.test")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False

    assert cert.not_valid_before_utc == datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert cert.not_valid_after_utc == datetime(2026, 3, 31, 12, 0, 0, tzinfo=UTC)
    assert not_after == cert.not_valid_after_utc

    # The CSR's key, i.e. the host's SSH key, is the certificate's key.
    pub = cert.public_key()
    assert isinstance(pub, ed25519.Ed25519PublicKey)
    assert pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == raw(
        host_key
    )


def test_issued_cert_verifies_against_the_ca_only(
    ca: FleetCa, host_key: ed25519.Ed25519PrivateKey
) -> None:
    cert = issue(ca, host_key)
    cert.verify_directly_issued_by(ca.cert)
    # A webpki-style client-cert path validation, as rustls would do it.
    verifier = PolicyBuilder().store(Store([ca.cert])).time(NOW).build_client_verifier()
    verified = verifier.verify(cert, [])
    assert verified.subjects == [x509.DNSName("agent-web-01.fleet.test")]

    other_key = ec.generate_private_key(ec.SECP256R1())
    other = make_ca_cert(other_key, cn="test fleet CA")  # same name, other key
    with pytest.raises(InvalidSignature):
        cert.verify_directly_issued_by(other)
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([other])).time(NOW).build_client_verifier().verify(cert, [])


@pytest.mark.parametrize(
    ("validity", "expected"),
    [(2_592_000, 2_592_000), (3600, 3600), (60, 60), (59, 60), (1, 60), (0, 60), (-5, 60)],
)
def test_validity_has_a_minimum_of_60_seconds(
    ca: FleetCa, host_key: ed25519.Ed25519PrivateKey, validity: int, expected: int
) -> None:
    cert = issue(ca, host_key, validity_secs=validity)
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert span == timedelta(seconds=expected)


def test_other_csr_subject_attributes_are_kept(
    ca: FleetCa, host_key: ed25519.Ed25519PrivateKey
) -> None:
    csr_pem = csr_with(
        host_key,
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "arcanesys"),
            x509.NameAttribute(NameOID.COMMON_NAME, "web-01"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "fleet"),
        ],
    )
    cert_pem, _ = issue_agent_cert(ca, parse_csr(csr_pem), "web-01", SUFFIX, NOW)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    assert cert.subject == x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "arcanesys"),
            x509.NameAttribute(NameOID.COMMON_NAME, "agent-web-01.fleet.test"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "fleet"),
        ]
    )


def test_cn_comes_from_the_machine_id_not_the_csr(
    ca: FleetCa, host_key: ed25519.Ed25519PrivateKey
) -> None:
    csr = parse_csr(build_csr(openssh(host_key), "some-other-name"))
    cert_pem, _ = issue_agent_cert(ca, csr, "db-7", "prod.example.org", NOW)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cns] == ["agent-db-7.prod.example.org"]


@pytest.mark.parametrize(
    ("machine_id", "suffix"),
    [
        ("", SUFFIX),
        ("a.b", SUFFIX),
        ("web 01", SUFFIX),
        ("wéb", SUFFIX),
        ("web", ""),
        ("web", "x..y"),
    ],
)
def test_bad_machine_id_or_suffix_is_refused(
    ca: FleetCa, host_key: ed25519.Ed25519PrivateKey, machine_id: str, suffix: str
) -> None:
    csr = parse_csr(build_csr(openssh(host_key), "web-01"))
    with pytest.raises(BadInput):
        issue_agent_cert(ca, csr, machine_id, suffix, NOW)


def test_naive_now_is_a_bug(ca: FleetCa, host_key: ed25519.Ed25519PrivateKey) -> None:
    csr = parse_csr(build_csr(openssh(host_key), "web-01"))
    with pytest.raises(ValueError, match="naive"):
        issue_agent_cert(ca, csr, "web-01", SUFFIX, datetime(2026, 3, 1))


# --- CSRs ----------------------------------------------------------------------------------


def test_csr_binds_the_host_key_and_names_the_host(host_key: ed25519.Ed25519PrivateKey) -> None:
    csr = parse_csr(build_csr(openssh(host_key), "web-01"))
    assert csr.cn == "web-01"
    assert csr.is_ed25519
    assert csr.key_raw == raw(host_key)
    # The §3.4 fingerprint of the declared OpenSSH line equals the CSR's.
    assert csr.fingerprint == public_key_of(host_key).fingerprint
    assert csr.fingerprint == fingerprint(raw(host_key))
    assert len(csr.fingerprint) == 44


def test_csr_from_pkcs8_equals_csr_from_openssh(host_key: ed25519.Ed25519PrivateKey) -> None:
    a = parse_csr(build_csr(openssh(host_key), "web-01"))
    b = parse_csr(build_csr(pkcs8(host_key), "web-01"))
    assert (a.cn, a.key_raw) == (b.cn, b.key_raw)
    # ed25519 signatures are deterministic, so the whole CSR is the same.
    assert build_csr(openssh(host_key), "web-01") == build_csr(pkcs8(host_key), "web-01")


def test_csr_of_another_key_does_not_match(host_key: ed25519.Ed25519PrivateKey) -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    csr = parse_csr(build_csr_for_key(other, "web-01"))
    assert csr.fingerprint != public_key_of(host_key).fingerprint


def test_csr_with_a_foreign_signature_is_refused(host_key: ed25519.Ed25519PrivateKey) -> None:
    """A CSR carrying the host's public key but signed by another key (no possession)."""
    other = ed25519.Ed25519PrivateKey.generate()
    good = x509.load_pem_x509_csr(build_csr(openssh(host_key), "web-01").encode())
    forged_sig = other.sign(good.tbs_certrequest_bytes)
    der = good.public_bytes(serialization.Encoding.DER)
    assert der.endswith(good.signature)
    forged = der[: -len(good.signature)] + forged_sig
    forged_pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(forged)
    forged_pem += b"-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(BadInput, match="signature"):
        parse_csr(forged_pem)


def test_non_ed25519_csr_is_flagged_and_not_issued(ca: FleetCa) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    csr = parse_csr(csr_with(p256, [x509.NameAttribute(NameOID.COMMON_NAME, "web-01")]))
    assert csr.cn == "web-01"
    assert not csr.is_ed25519
    point = p256.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert csr.key_raw == point
    assert csr.fingerprint == base64.b64encode(hashlib.sha256(point).digest()).decode()
    with pytest.raises(BadInput, match="ed25519"):
        issue_agent_cert(ca, csr, "web-01", SUFFIX, NOW)


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"not a csr",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ],
)
def test_garbage_csr_is_one_line_bad_input(text: bytes) -> None:
    with pytest.raises(BadInput) as err:
        parse_csr(text)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("csrPem: ")


def test_csr_without_cn_is_refused(host_key: ed25519.Ed25519PrivateKey) -> None:
    csr_pem = csr_with(host_key, [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")])
    with pytest.raises(BadInput, match="common name"):
        parse_csr(csr_pem)


def test_agent_csr_refuses_non_ed25519_and_bad_hostnames(
    host_key: ed25519.Ed25519PrivateKey,
) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(BadInput):
        build_csr(pkcs8(p256), "web-01")
    with pytest.raises(BadInput):
        build_csr(b"garbage", "web-01")
    with pytest.raises(BadInput):
        build_csr(openssh(host_key), "")
    with pytest.raises(BadInput):
        build_csr(openssh(host_key), "web 01")


def test_tls_key_is_pkcs8_of_the_host_key(host_key: ed25519.Ed25519PrivateKey) -> None:
    out = tls_key_pem(openssh(host_key))
    assert out.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = serialization.load_pem_private_key(out, password=None)
    assert isinstance(loaded, ed25519.Ed25519PrivateKey)
    assert raw(loaded) == raw(host_key)
    # §3.4: PKCS#8 for an ed25519 seed is a fixed prefix followed by the seed.
    der = loaded.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    seed = host_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert der == bytes.fromhex("302e020100300506032b657004220420") + seed


# --- loading the CA ------------------------------------------------------------------------

EC_PARAMETERS_P256 = (
    b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
)


def sec1(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def test_ca_key_formats(host_key: ed25519.Ed25519PrivateKey) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    rsa_pkcs1 = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert rsa_pkcs1.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert sec1(ec_key).startswith(b"-----BEGIN EC PRIVATE KEY-----")
    cases: list[tuple[CaPrivate, bytes]] = [
        (ec_key, pkcs8(ec_key)),
        (ec_key, sec1(ec_key)),
        (ec_key, EC_PARAMETERS_P256 + sec1(ec_key)),  # `openssl ecparam -genkey` output
        (rsa_key, rsa_pkcs1),
        (rsa_key, pkcs8(rsa_key)),
        (ed_key, pkcs8(ed_key)),
    ]
    for key, key_pem in cases:
        ca_cert = make_ca_cert(key)
        fleet_ca = load_fleet_ca(pem(ca_cert), key_pem)
        cert = issue(fleet_ca, host_key)
        cert.verify_directly_issued_by(ca_cert)


def test_ca_key_must_match_the_cert(ca: FleetCa) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(BadInput, match="does not match"):
        load_fleet_ca(pem(ca.cert), pkcs8(other))


@pytest.mark.parametrize(
    ("cert_pem", "key_pem", "match"),
    [
        (b"nope", None, "fleet CA cert"),
        (None, b"nope", "no PEM private key"),
        (None, EC_PARAMETERS_P256, "no PEM private key"),
        (None, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "fleet CA key"),
    ],
)
def test_unusable_ca_files_are_bad_input(
    ca: FleetCa,
    ca_key: ec.EllipticCurvePrivateKey,
    cert_pem: bytes | None,
    key_pem: bytes | None,
    match: str,
) -> None:
    with pytest.raises(BadInput, match=match) as err:
        load_fleet_ca(cert_pem or pem(ca.cert), key_pem or pkcs8(ca_key))
    assert "\n" not in str(err.value)


def test_encrypted_ca_key_is_refused(ca: FleetCa, ca_key: ec.EllipticCurvePrivateKey) -> None:
    enc = ca_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(BadInput, match="encrypted"):
        load_fleet_ca(pem(ca.cert), enc)


# --- CN extraction and the audit log ---------------------------------------------------------


@pytest.mark.parametrize(
    ("cn", "expected"),
    [
        ("agent-web-01.fleet.test", "web-01"),
        ("agent-agent-x.fleet.test", "agent-x"),
        ("web-01", "web-01"),  # legacy bare CN
        ("operator-alice@laptop", "operator-alice@laptop"),
        ("agent-web-01.other.test", "agent-web-01.other.test"),  # another suffix
        ("agent-.fleet.test", "agent-.fleet.test"),  # empty id
        ("agent-web-01.fleet.test.evil", "agent-web-01.fleet.test.evil"),
        ("xagent-web-01.fleet.test", "xagent-web-01.fleet.test"),
        ("agent-web-01fleet.test", "agent-web-01fleet.test"),  # no dot before the suffix
    ],
)
def test_extract_machine_id(cn: str, expected: str) -> None:
    assert extract_machine_id(cn, SUFFIX) == expected


@pytest.mark.parametrize(
    ("cn", "role"),
    [
        ("operator-alice@laptop", Role.OPERATOR),
        ("operator-a.b_c-d@web-01.example.org", Role.OPERATOR),
        ("agent-web-01.fleet.test", Role.AGENT),
        ("web-01", Role.AGENT),  # legacy bare CN: a host, as extract_machine_id reads it
        ("operator-alice", Role.AGENT),  # no @host
        ("operator-@laptop", Role.AGENT),
        ("operator-alice@", Role.AGENT),
        ("operator-a@b@c", Role.AGENT),
        ("operator-a b@laptop", Role.AGENT),
        ("operator-alice@lap\ntop", Role.AGENT),
        ("xoperator-alice@laptop", Role.AGENT),
        ("agent-operator-alice@laptop.fleet.test", Role.AGENT),
    ],
)
def test_role_of(cn: str, role: Role) -> None:
    assert role_of(cn) is role


def test_operator_cn() -> None:
    assert operator_cn("alice", "laptop") == "operator-alice@laptop"
    assert role_of(operator_cn("alice", "laptop")) is Role.OPERATOR
    for user, host in (("a b", "h"), ("", "h"), ("a@b", "h"), ("a", "-h"), ("a", "h\n")):
        with pytest.raises(BadInput):
            operator_cn(user, host)


def test_audit_line_for_enroll_and_renew() -> None:
    not_after = datetime(2026, 3, 31, 12, 0, 0, tzinfo=UTC)
    line = audit_line(
        at=NOW,
        requester_cn=None,
        issued_cn="agent-web-01.fleet.test",
        not_after=not_after,
        validity_secs=2_592_000,
        context=enroll_context("0123456789abcdef0123456789abcdef"),
    )
    assert line.endswith("\n") and line.count("\n") == 1
    assert line == (
        '{"at":"' + format_instant(NOW) + '","requester_cn":"<enroll>",'
        '"issued_cn":"agent-web-01.fleet.test","not_after":"2026-03-31T12:00:00Z",'
        '"validity_secs":2592000,"context":"enroll/nonce:0123456789abcdef0123456789abcdef"}\n'
    )
    renew = json.loads(
        audit_line(
            at=NOW,
            requester_cn="agent-web-01.fleet.test",
            issued_cn="agent-web-01.fleet.test",
            not_after=not_after,
            validity_secs=60,
            context=renew_context(),
        )
    )
    assert renew["requester_cn"] == "agent-web-01.fleet.test"
    assert renew["context"] == "renew/prev:<unknown>"
    assert list(renew) == [
        "at",
        "requester_cn",
        "issued_cn",
        "not_after",
        "validity_secs",
        "context",
    ]


def test_csr_record_is_frozen(host_key: ed25519.Ed25519PrivateKey) -> None:
    csr: Csr = parse_csr(build_csr(openssh(host_key), "web-01"))
    with pytest.raises(AttributeError):
        csr.cn = "x"  # type: ignore[misc]
