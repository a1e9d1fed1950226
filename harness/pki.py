"""A development and test PKI: fleet CA, server cert, agent and operator client certs.

`Pki.create(dir)` writes:

- `ca.crt`/`ca.key`: the fleet CA (EC P-256, BasicConstraints ca=True, keyCertSign).
  It is the CP's `--client-ca`, `--fleet-ca-cert`/`--fleet-ca-key` and the agents'
  and CLI's `--ca-cert` (the server cert chains to it too);
- `server.crt`/`server.key`: the CP's TLS cert (SAN DNS `localhost`, IP `127.0.0.1`,
  EKU serverAuth);
- `other-ca.crt`/`other-ca.key`: an unrelated CA for "cert from another CA" tests;
- `pki.json`: the agent CN suffix, so `Pki.open(dir)` finds everything again.

Host keys (`hosts/<name>/`), agent certs (`agents/<id>/`) and operator certs
(`operators/<user>@<host>/`) are made on demand. Agent certs are issued by
`nixfleet.cp.issuance` from a CSR built by `nixfleet.agent.csr`, so they have exactly
the shape the CP issues. Private keys are written mode 0600.
"""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nixfleet.agent.csr import build_csr, tls_key_pem
from nixfleet.core.hostkey import load_host_private_key, public_key_of
from nixfleet.cp.issuance import (
    DEFAULT_VALIDITY_SECS,
    agent_cn,
    issue_agent_cert,
    issue_operator_cert,
    load_fleet_ca,
    operator_cn,
    parse_csr,
)

CA_YEARS = 10
CA_BACKDATE = timedelta(days=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class CertPaths:
    """A certificate and its private key on disk (PEM), with the cert's CN."""

    cert: Path
    key: Path
    cn: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HostKey:
    """An ed25519 SSH host keypair as a host has it, plus the PKCS#8 form TLS loads."""

    name: str
    private_key: Path
    """OpenSSH private key file (`-----BEGIN OPENSSH PRIVATE KEY-----`)."""
    public_key: Path
    """`<private_key>.pub`: the `ssh-ed25519 AAAA… <name>` line."""
    tls_key: Path
    """The same key as unencrypted PKCS#8 PEM, for `ssl.SSLContext.load_cert_chain`."""
    public_line: str
    fingerprint: str
    """base64(sha256(raw key)), the bootstrap token's `expectedPubkeyFingerprint`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentCert:
    """An issued agent client cert; `key` is the host key's PKCS#8 form."""

    machine_id: str
    cn: str
    cert: Path
    key: Path
    host_key: HostKey
    not_after: datetime


Identity = CertPaths | AgentCert


# --- building blocks (also used by harness.forge) -----------------------------------


def new_ca(
    cn: str, *, now: datetime | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed EC P-256 CA: BasicConstraints ca=True, KU keyCertSign + cRLSign."""
    now = _now(now)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CA_BACKDATE)
        .not_valid_after(now + timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def new_server_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    cn: str = "localhost",
    now: datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A P-256 TLS server cert: SAN DNS `localhost` + IP `127.0.0.1`, EKU serverAuth."""
    now = _now(now)
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        _leaf(ca_cert, ca_key, key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .not_valid_before(now - CA_BACKDATE)
        .not_valid_after(now + timedelta(days=365 * CA_YEARS))
        .add_extension(san, critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def write_cert_and_key(
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey,
    cert_path: Path,
    key_path: Path,
) -> CertPaths:
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(key_path, _pkcs8(key))
    return CertPaths(cert=cert_path, key=key_path, cn=_cn_of(cert))


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file created 0600 (replacing any previous one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def server_ssl_context(
    cert: Path, key: Path, *, client_ca: Path | None = None, require_client_cert: bool = True
) -> ssl.SSLContext:
    """A TLS server context; with `client_ca`, client certs chaining to it are requested.

    `require_client_cert=False` asks for a cert without requiring one (the CP's mode:
    `/v1/enroll` comes without a cert).
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_ssl_context(
    ca: Path | None,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A client context trusting `ca` (None: the system store), presenting `cert`/`key`."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


# --- the fleet PKI --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Pki:
    dir: Path
    cn_suffix: str
    ca: CertPaths
    server: CertPaths
    other_ca: CertPaths

    @classmethod
    def create(
        cls, dir: Path, cn_suffix: str = "fleet.test", *, now: datetime | None = None
    ) -> Pki:
        """Write a fresh fleet CA, server cert and second CA under `dir`."""
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        agent_cn("probe", cn_suffix)  # validates the suffix before anything is written
        ca_cert, ca_key = new_ca("nixfleet test fleet CA", now=now)
        ca = write_cert_and_key(ca_cert, ca_key, dir / "ca.crt", dir / "ca.key")
        srv_cert, srv_key = new_server_cert(ca_cert, ca_key, now=now)
        server = write_cert_and_key(srv_cert, srv_key, dir / "server.crt", dir / "server.key")
        other_cert, other_key = new_ca("unrelated test CA", now=now)
        other = write_cert_and_key(
            other_cert, other_key, dir / "other-ca.crt", dir / "other-ca.key"
        )
        (dir / "pki.json").write_text(json.dumps({"cn_suffix": cn_suffix}) + "\n")
        return cls(dir=dir, cn_suffix=cn_suffix, ca=ca, server=server, other_ca=other)

    @classmethod
    def open(cls, dir: Path) -> Pki:
        """A PKI that `create` wrote earlier."""
        dir = Path(dir)
        cn_suffix = str(json.loads((dir / "pki.json").read_text())["cn_suffix"])

        def pair(stem: str) -> CertPaths:
            cert = dir / f"{stem}.crt"
            return CertPaths(cert=cert, key=dir / f"{stem}.key", cn=_cn_of(_load_cert(cert)))

        return cls(
            dir=dir,
            cn_suffix=cn_suffix,
            ca=pair("ca"),
            server=pair("server"),
            other_ca=pair("other-ca"),
        )

    # --- host keys and agent certs ----------------------------------------------------

    def host_key(self, name: str) -> HostKey:
        """The ed25519 SSH host key of `name`, created on first use and reused after."""
        base = self.dir / "hosts" / name
        private = base / "ssh_host_ed25519_key"
        if private.exists():
            key = load_host_private_key(private.read_bytes())
        else:
            key = Ed25519PrivateKey.generate()
            openssh = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
            write_private(private, openssh)
        pub = public_key_of(key, comment=name)
        public = base / "ssh_host_ed25519_key.pub"
        public.write_text(pub.line() + "\n")
        tls_key = base / "tls-key.pem"
        if not tls_key.exists():
            write_private(tls_key, tls_key_pem(private.read_bytes()))
        return HostKey(
            name=name,
            private_key=private,
            public_key=public,
            tls_key=tls_key,
            public_line=pub.line(),
            fingerprint=pub.fingerprint,
        )

    def issue_agent(
        self,
        machine_id: str,
        *,
        host_key: HostKey | None = None,
        validity_secs: int = DEFAULT_VALIDITY_SECS,
        now: datetime | None = None,
        by_other_ca: bool = False,
    ) -> AgentCert:
        """An `agent-<id>.<suffix>` client cert for `machine_id`'s host key.

        The CSR is signed with the host key (CN = `machine_id`) and issued by the same
        code as `/v1/enroll`. `by_other_ca` signs it with the unrelated CA instead.
        """
        hk = host_key if host_key is not None else self.host_key(machine_id)
        signer = self.other_ca if by_other_ca else self.ca
        ca = load_fleet_ca(signer.cert.read_bytes(), signer.key.read_bytes())
        csr = parse_csr(build_csr(hk.private_key.read_bytes(), machine_id))
        pem, not_after = issue_agent_cert(
            ca, csr, machine_id, self.cn_suffix, _now(now), validity_secs
        )
        name = "other-ca-cert.pem" if by_other_ca else "cert.pem"
        cert_path = self.dir / "agents" / machine_id / name
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.write_text(pem)
        return AgentCert(
            machine_id=machine_id,
            cn=agent_cn(machine_id, self.cn_suffix),
            cert=cert_path,
            key=hk.tls_key,
            host_key=hk,
            not_after=not_after,
        )

    # --- operators ----------------------------------------------------------------------

    def issue_operator(
        self,
        user: str = "operator",
        host: str = "localhost",
        *,
        now: datetime | None = None,
        by_other_ca: bool = False,
    ) -> CertPaths:
        """An operator client cert made by `nixfleet mint-operator-cert`'s code (§3.4)."""
        signer = self.other_ca if by_other_ca else self.ca
        ca = load_fleet_ca(signer.cert.read_bytes(), signer.key.read_bytes())
        cert, key = issue_operator_cert(ca, operator_cn(user, host), _now(now))
        base = self.dir / "operators" / f"{user}@{host}"
        stem = "other-ca-" if by_other_ca else ""
        return write_cert_and_key(cert, key, base / f"{stem}cert.pem", base / f"{stem}key.pem")

    # --- ssl contexts -------------------------------------------------------------------

    def server_context(self, *, require_client_cert: bool = True) -> ssl.SSLContext:
        """The CP's server context: server cert, client certs chaining to the fleet CA."""
        return server_ssl_context(
            self.server.cert,
            self.server.key,
            client_ca=self.ca.cert,
            require_client_cert=require_client_cert,
        )

    def client_context(
        self, identity: Identity | None = None, *, max_version: ssl.TLSVersion | None = None
    ) -> ssl.SSLContext:
        """A client context (aiohttp `ssl=`) trusting the fleet CA, presenting `identity`."""
        return client_ssl_context(
            self.ca.cert,
            cert=identity.cert if identity is not None else None,
            key=identity.key if identity is not None else None,
            max_version=max_version,
        )


# --- helpers --------------------------------------------------------------------------


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pkcs8(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _cn_of(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = attrs[0].value if attrs else ""
    return value.decode("utf-8") if isinstance(value, bytes) else value
