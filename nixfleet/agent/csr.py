"""The agent's certificate signing request (protocol §3.4).

The agent proves possession of its ed25519 SSH host key by signing the CSR with it;
the CSR names the bare hostname as CN. The CP replaces the CN with
`agent-<machineId>.<suffix>` and keeps the key, so the same host key is the agent's
mTLS key, which `ssl` loads from the PKCS#8 form built here.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from nixfleet.core.errors import BadInput
from nixfleet.core.hostkey import load_host_private_key
from nixfleet.core.idents import HOSTNAME


def build_csr(private_key: bytes, hostname: str, *, source: str = "host key") -> str:
    """A PEM CSR, CN = `hostname`, signed by the host key in `private_key`.

    `private_key` is an OpenSSH private key file or a PKCS#8 PEM (also a raw seed or
    its hex, as `load_host_private_key` accepts). ParseError/BadInput if unusable.
    """
    return build_csr_for_key(load_host_private_key(private_key, source=source), hostname)


def build_csr_for_key(key: Ed25519PrivateKey, hostname: str) -> str:
    if not HOSTNAME.test(hostname):
        raise BadInput(f"hostname: {hostname!r} is not a host name")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .sign(key, None)
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def tls_key_pem(private_key: bytes, *, source: str = "host key") -> bytes:
    """The host key as unencrypted PKCS#8 PEM, the form `ssl.load_cert_chain` reads."""
    key = load_host_private_key(private_key, source=source)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
