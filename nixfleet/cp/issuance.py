"""The fleet CA signer behind `/v1/enroll`, `/v1/agent/renew` and `nixfleet
mint-operator-cert` (protocol §1.3, §3.4), and the CN grammar that tells an agent
certificate from an operator's.

Pure functions over PEM bytes and a caller-supplied `now`; reading the CA files,
writing the audit log and checking tokens or declared keys belong to the callers.

An issued agent certificate has:

- subject = the CSR's subject with its CN replaced by `agent-<machineId>.<suffix>`;
- SAN dNSName = that CN (webpki needs a SAN);
- EKU clientAuth, KU digitalSignature, not a CA;
- notBefore = `now` truncated to whole seconds, notAfter = notBefore + validity
  (at least `MIN_VALIDITY_SECS`);
- the CSR's public key: the agent's ed25519 SSH host key.

An operator certificate has CN `operator-<user>@<host>`, O=arcanesys, OU=fleet, a new
P-256 key, KU digitalSignature, EKU clientAuth, not a CA, notBefore now − 5 min and
notAfter now + 365 days. Enrollment always replaces the CSR's CN with an agent CN, so no
agent can obtain an operator CN: the CN alone decides the role.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nixfleet.core.errors import BadInput
from nixfleet.core.hostkey import fingerprint
from nixfleet.core.idents import HOSTNAME
from nixfleet.core.timeutil import format_instant

DEFAULT_VALIDITY_SECS = 2_592_000
"""`--agent-cert-validity-secs` default: 30 days."""

MIN_VALIDITY_SECS = 60

AGENT_CN_PREFIX = "agent-"
OPERATOR_CN_PREFIX = "operator-"
OPERATOR_DAYS = 365
OPERATOR_BACKDATE = timedelta(minutes=5)
ENROLL_REQUESTER = "<enroll>"
UNKNOWN_PREVIOUS = "<unknown>"

CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

_MACHINE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
_SUFFIX = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_OPERATOR_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetCa:
    """The fleet CA: its certificate and the private key that matches it."""

    cert: x509.Certificate
    key: CaKey


@dataclass(frozen=True, slots=True, kw_only=True)
class Csr:
    """A parsed, self-signature-checked certificate signing request."""

    cn: str
    subject: x509.Name
    public_key: CertificatePublicKeyTypes
    key_raw: bytes
    """The SPKI key bits: 32 raw bytes for ed25519, the X9.62 point for EC, PKCS#1 for RSA."""

    @property
    def is_ed25519(self) -> bool:
        return isinstance(self.public_key, ed25519.Ed25519PublicKey)

    @property
    def fingerprint(self) -> str:
        """base64(sha256(key bits)), padded; for ed25519 the §3.4 host-key fingerprint."""
        return fingerprint(self.key_raw)


# --- loading the CA ---------------------------------------------------------------


def load_fleet_ca(cert_pem: bytes, key_pem: bytes) -> FleetCa:
    """The CA from `--fleet-ca-cert` and `--fleet-ca-key` bytes.

    The key may be PKCS#8, SEC1 (`EC PRIVATE KEY`, optionally after an
    `EC PARAMETERS` block as `openssl ecparam -genkey` writes it) or PKCS#1 RSA PEM.
    The first certificate in `cert_pem` is the CA; its key must match `key_pem`.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise BadInput(f"fleet CA cert: not a PEM certificate ({_first_line(exc)})") from exc
    key = load_ca_key(key_pem)
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise BadInput("fleet CA key: does not match the fleet CA certificate's public key")
    return FleetCa(cert=cert, key=key)


def load_ca_key(key_pem: bytes) -> CaKey:
    """The CA private key from PEM bytes; other PEM blocks (EC PARAMETERS) are skipped."""
    block = _private_key_block(key_pem)
    try:
        key = serialization.load_pem_private_key(block, password=None)
    except TypeError as exc:  # cryptography's "needs a password"
        raise BadInput("fleet CA key: encrypted private keys are not supported") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BadInput(f"fleet CA key: not a usable PEM private key ({_first_line(exc)})") from exc
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise BadInput(f"fleet CA key: unsupported key type {type(key).__name__}")
    return key


def _private_key_block(data: bytes) -> bytes:
    for match in _PEM_BLOCK.finditer(data):
        if match.group(1).endswith(b"PRIVATE KEY"):
            return match.group(0)
    raise BadInput("fleet CA key: no PEM private key block (want PKCS#8, SEC1 or RSA PEM)")


# --- CSRs -------------------------------------------------------------------------


def parse_csr(pem: bytes | str) -> Csr:
    """Parse a PEM CSR, check its self-signature and that it names a CN; BadInput if not."""
    data = pem.encode("utf-8") if isinstance(pem, str) else pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise BadInput(
            f"csrPem: not a PEM certificate signing request ({_first_line(exc)})"
        ) from exc
    try:
        public_key = csr.public_key()
        signature_ok = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BadInput(f"csrPem: unusable public key ({_first_line(exc)})") from exc
    if not signature_ok:
        raise BadInput("csrPem: signature does not verify with the CSR's own key")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else ""
    if isinstance(cn, bytes):
        cn = cn.decode("utf-8", "replace")
    if not cn:
        raise BadInput("csrPem: subject has no common name")
    return Csr(cn=cn, subject=csr.subject, public_key=public_key, key_raw=_key_bits(public_key))


def _key_bits(key: CertificatePublicKeyTypes) -> bytes:
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return _spki(key)


# --- issuing ----------------------------------------------------------------------


def agent_cn(machine_id: str, cn_suffix: str) -> str:
    """`agent-<machineId>.<suffix>`; BadInput for an id or suffix that is not DNS-like."""
    if not _MACHINE_ID.match(machine_id):
        raise BadInput(f"machine id: {machine_id!r} is not a hostname label")
    if not _SUFFIX.match(cn_suffix):
        raise BadInput(f"agent CN suffix: {cn_suffix!r} is not a dotted DNS name")
    return f"{AGENT_CN_PREFIX}{machine_id}.{cn_suffix}"


def extract_machine_id(cn: str, cn_suffix: str) -> str:
    """Strip the `agent-…​.<suffix>` wrapper; other CNs (legacy bare, operator) pass as-is."""
    tail = f".{cn_suffix}"
    if cn.startswith(AGENT_CN_PREFIX) and cn.endswith(tail):
        inner = cn[len(AGENT_CN_PREFIX) : len(cn) - len(tail)]
        if inner:
            return inner
    return cn


class Role(StrEnum):
    AGENT = "agent"
    OPERATOR = "operator"


def operator_cn(user: str, host: str) -> str:
    """`operator-<user>@<host>`; BadInput for a user or host name outside the grammar."""
    if not _OPERATOR_USER.fullmatch(user):
        raise BadInput(f"operator user: {user!r} is not a user name (letters, digits, ._-)")
    if not HOSTNAME.test(host):
        raise BadInput(f"operator host: {host!r} is not a host name")
    return f"{OPERATOR_CN_PREFIX}{user}@{host}"


def role_of(cn: str) -> Role:
    """An operator CN is `operator-<user>@<host>`; every other CN names a host (an agent
    CN, or a legacy bare one), which `extract_machine_id` reads."""
    user, at, host = cn.removeprefix(OPERATOR_CN_PREFIX).partition("@")
    is_operator = (
        cn.startswith(OPERATOR_CN_PREFIX)
        and at == "@"
        and _OPERATOR_USER.fullmatch(user) is not None
        and HOSTNAME.test(host)
    )
    return Role.OPERATOR if is_operator else Role.AGENT


def effective_validity_secs(validity_secs: int) -> int:
    """The validity actually used: never below `MIN_VALIDITY_SECS`."""
    return max(int(validity_secs), MIN_VALIDITY_SECS)


def issue_agent_cert(
    ca: FleetCa,
    csr: Csr,
    machine_id: str,
    cn_suffix: str,
    now: datetime,
    validity_secs: int = DEFAULT_VALIDITY_SECS,
    *,
    serial: int | None = None,
) -> tuple[str, datetime]:
    """Sign an agent client certificate; returns `(cert PEM text, notAfter)`.

    The CSR key must be ed25519 (the agent's SSH host key) else BadInput. `now` must be
    aware; it is truncated to whole seconds. `serial` defaults to 159 random bits.
    """
    if now.tzinfo is None:
        raise ValueError("naive datetime")
    if not isinstance(csr.public_key, ed25519.Ed25519PublicKey):
        kind = type(csr.public_key).__name__.removeprefix("_")
        raise BadInput(f"csrPem: key is {kind}, agent certificates need an ed25519 host key")
    cn = agent_cn(machine_id, cn_suffix)
    not_before = now.replace(microsecond=0)
    not_after = not_before + timedelta(seconds=effective_validity_secs(validity_secs))
    ca_public = ca.key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_with_cn(csr.subject, cn))
        .issuer_name(ca.cert.subject)
        .public_key(csr.public_key)
        .serial_number(serial if serial is not None else secrets.randbits(159) | 1)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_digital_signature_only(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
    )
    cert = builder.sign(ca.key, _hash_for(ca.key))
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), not_after


def issue_operator_cert(
    ca: FleetCa, cn: str, now: datetime, *, days: int = OPERATOR_DAYS
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new P-256 key and the operator client certificate for it (see the module doc).

    `cn` must be an operator CN (`operator_cn`); `now` must be aware.
    """
    if now.tzinfo is None:
        raise ValueError("naive datetime")
    if role_of(cn) is not Role.OPERATOR:
        raise BadInput(f"operator CN: {cn!r} is not operator-<user>@<host>")
    if days < 1:
        raise BadInput(f"operator certificate: --days must be at least 1, got {days}")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "arcanesys"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "fleet"),
        ]
    )
    now = now.replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(159) | 1)
        .not_valid_before(now - OPERATOR_BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_digital_signature_only(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, _hash_for(ca.key))
    )
    return cert, key


def _with_cn(subject: x509.Name, cn: str) -> x509.Name:
    """The subject with every CN attribute replaced by `cn`, other attributes kept in order."""
    rdns: list[x509.RelativeDistinguishedName] = []
    replaced = False
    for rdn in subject.rdns:
        attrs: list[x509.NameAttribute[str | bytes]] = []
        for attr in rdn:
            if attr.oid == NameOID.COMMON_NAME:
                if replaced:
                    continue
                attrs.append(x509.NameAttribute[str | bytes](NameOID.COMMON_NAME, cn))
                replaced = True
            else:
                attrs.append(attr)
        if attrs:
            rdns.append(x509.RelativeDistinguishedName(attrs))
    if not replaced:
        rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    return x509.Name(rdns)


def _digital_signature_only() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _hash_for(key: CaKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- audit log ----------------------------------------------------------------------


def enroll_context(nonce: str) -> str:
    return f"enroll/nonce:{nonce}"


def renew_context(previous: str | None = None) -> str:
    """`renew/prev:<unknown>` unless the previous certificate's identity is known."""
    return f"renew/prev:{previous if previous else UNKNOWN_PREVIOUS}"


def audit_line(
    *,
    at: datetime,
    requester_cn: str | None,
    issued_cn: str,
    not_after: datetime,
    validity_secs: int,
    context: str,
) -> str:
    """One issuance audit-log line (protocol §2.8), JSON, ending in a newline.

    `requester_cn` None means an enrollment (`<enroll>`); a renewal passes the caller's
    mTLS CN. Instants are RFC 3339 with `Z`.
    """
    record = {
        "at": format_instant(at),
        "requester_cn": ENROLL_REQUESTER if requester_cn is None else requester_cn,
        "issued_cn": issued_cn,
        "not_after": format_instant(not_after),
        "validity_secs": int(validity_secs),
        "context": context,
    }
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
