"""OpenSSH ed25519 host keys and their fingerprints (protocol §3.4).

A host's `pubkey` is an OpenSSH line `ssh-ed25519 AAAA… comment`; the raw 32-byte key
is the second SSH-wire string in the base64 blob. Its fingerprint is
base64(sha256(raw)), standard and padded, 44 characters. That is *not* OpenSSH's
`SHA256:…` form (unpadded), though both encode the same digest.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import BadInput, ParseError
from .signing import algorithm_of, load_private_key

SSH_ED25519 = "ssh-ed25519"
FINGERPRINT_LEN = 44
OPENSSH_FINGERPRINT_PREFIX = "SHA256:"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPublicKey:
    raw: bytes
    """The 32-byte ed25519 public key."""
    comment: str = ""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.raw)

    def line(self) -> str:
        """The OpenSSH public line, with the comment if there is one."""
        blob = _ssh_string(SSH_ED25519.encode("ascii")) + _ssh_string(self.raw)
        text = f"{SSH_ED25519} {base64.b64encode(blob).decode('ascii')}"
        return f"{text} {self.comment}" if self.comment else text


def fingerprint(raw: bytes) -> str:
    """base64(sha256(raw key)), standard alphabet, padded: 44 characters."""
    return base64.b64encode(hashlib.sha256(raw).digest()).decode("ascii")


def normalize_fingerprint(text: str, *, source: str = "fingerprint") -> str:
    """The 44-character form of a fingerprint given as such or as OpenSSH `SHA256:…`.

    Both encode the same sha256 digest, so converting loses nothing; anything that
    does not decode to 32 bytes is refused.
    """
    body = text.strip()
    if body.startswith(OPENSSH_FINGERPRINT_PREFIX):
        body = body[len(OPENSSH_FINGERPRINT_PREFIX) :]
        body += "=" * (-len(body) % 4)
    try:
        digest = base64.b64decode(body.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise BadInput(f"{source}: not base64 ({text!r})") from exc
    if len(digest) != 32:
        raise BadInput(f"{source}: decodes to {len(digest)} bytes, want a 32-byte sha256")
    return base64.b64encode(digest).decode("ascii")


def parse_public_line(line: str, *, source: str = "host key") -> HostPublicKey:
    """Parse `ssh-ed25519 <base64> [comment]`; only ed25519 host keys are used."""
    parts = line.strip().split(maxsplit=2)
    if len(parts) < 2:
        raise ParseError(source, "", "not an OpenSSH public key line (want 'ssh-ed25519 AAAA…')")
    kind, b64 = parts[0], parts[1]
    if kind != SSH_ED25519:
        raise ParseError(source, "", f"key type {kind!r} is not {SSH_ED25519}")
    try:
        blob = base64.b64decode(b64.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ParseError(source, "", "key blob is not base64") from exc
    try:
        inner_kind, rest = _read_ssh_string(blob)
        raw, trailing = _read_ssh_string(rest)
    except ValueError as exc:
        raise ParseError(source, "", f"key blob is truncated ({exc})") from exc
    if inner_kind != SSH_ED25519.encode("ascii"):
        raise ParseError(source, "", f"key blob says {inner_kind!r}, line says {kind}")
    if trailing:
        raise ParseError(source, "", f"key blob has {len(trailing)} trailing bytes")
    if len(raw) != 32:
        raise ParseError(source, "", f"ed25519 key is {len(raw)} bytes, want 32")
    return HostPublicKey(raw=raw, comment=parts[2].strip() if len(parts) == 3 else "")


def load_host_private_key(data: bytes, *, source: str = "host key") -> Ed25519PrivateKey:
    """An ed25519 private key from an OpenSSH private key file, PKCS#8 PEM, raw or hex."""
    key = load_private_key(data, source=source)
    if not isinstance(key, Ed25519PrivateKey):
        raise ParseError(source, "", f"host keys are ed25519, this is {algorithm_of(key)}")
    return key


def public_key_of(key: Ed25519PrivateKey, *, comment: str = "") -> HostPublicKey:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return HostPublicKey(raw=raw, comment=comment)


def host_public_key_from(data: bytes, *, source: str = "host key") -> HostPublicKey:
    """The public key in a file holding either an OpenSSH public line or a private key."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("ssh-", "ecdsa-", "sk-")):
            return parse_public_line(stripped, source=source)
    return public_key_of(load_host_private_key(data, source=source))


def _ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _read_ssh_string(buf: bytes) -> tuple[bytes, bytes]:
    if len(buf) < 4:
        raise ValueError("missing length")
    n = int.from_bytes(buf[:4], "big")
    if len(buf) < 4 + n:
        raise ValueError(f"string of {n} bytes, {len(buf) - 4} left")
    return buf[4 : 4 + n], buf[4 + n :]
