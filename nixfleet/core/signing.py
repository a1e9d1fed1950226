"""Signatures over bytes: ed25519 and ECDSA P-256/SHA-256 (protocol §3.2).

Callers pass the JCS bytes; this module only signs and verifies. Wire forms:

- public keys: base64 of the 32 raw bytes (ed25519) or of the 64-byte `X‖Y`
  without the `04` prefix (P-256);
- signatures: raw 64 bytes, `R‖S` (ed25519) or `r‖s` big-endian (P-256), never DER.

P-256 verification accepts high-s signatures (`s > n/2`): TPM2_Sign emits them about
half the time, and rejecting them was seed 000's `BadSignature` on every other tick.
ed25519 verification is strict: non-canonical `S`, and small-order public keys or
`R` points are refused, because OpenSSL alone accepts a forgery under a weak key.
"""

from __future__ import annotations

import base64
import binascii
import functools
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from .errors import ParseError, VerifyError

ED25519 = "ed25519"
ECDSA_P256 = "ecdsa-p256"
ALGORITHMS = (ED25519, ECDSA_P256)

SIGNATURE_LEN = 64
"""Both algorithms: 64 raw bytes."""

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
"""n, the order of the P-256 base point."""

P256_SEED_LEN = 40
"""Random bytes per P-256 key: 64 bits over the order's size keeps the bias negligible."""

PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey

# ed25519 (RFC 8032): field prime, group order, and d of -x² + y² = 1 + d·x²·y².
_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


@dataclass(frozen=True, slots=True, kw_only=True)
class PublicKey:
    """A decoded trust key: `raw` is 32 bytes (ed25519) or 64 bytes `X‖Y` (P-256)."""

    algorithm: str
    raw: bytes

    @property
    def b64(self) -> str:
        return base64.b64encode(self.raw).decode("ascii")


# --- public keys ---------------------------------------------------------------


def parse_public_key(algorithm: str, public_b64: str) -> PublicKey:
    """Decode a trust.json key; VerifyError `unsupported-algorithm` or `bad-pubkey`."""
    if algorithm not in ALGORITHMS:
        raise VerifyError("unsupported-algorithm", f"{algorithm!r}")
    try:
        raw = base64.b64decode(public_b64.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise VerifyError("bad-pubkey", f"{algorithm} public key is not base64 ({exc})") from exc
    if algorithm == ED25519:
        if len(raw) != 32:
            raise VerifyError("bad-pubkey", f"ed25519 public key is {len(raw)} bytes, want 32")
        if _ed25519_is_weak(raw):
            raise VerifyError("bad-pubkey", "ed25519 public key is a small-order point")
    else:
        if len(raw) != 64:
            raise VerifyError("bad-pubkey", f"ecdsa-p256 public key is {len(raw)} bytes, want 64")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
        except ValueError as exc:
            raise VerifyError("bad-pubkey", "ecdsa-p256 public key is not on the curve") from exc
    return PublicKey(algorithm=algorithm, raw=raw)


def public_key_of(key: PrivateKey) -> PublicKey:
    if isinstance(key, Ed25519PrivateKey):
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return PublicKey(algorithm=ED25519, raw=raw)
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return PublicKey(algorithm=ECDSA_P256, raw=point[1:])  # drop the 04 prefix


def algorithm_of(key: PrivateKey) -> str:
    return ED25519 if isinstance(key, Ed25519PrivateKey) else ECDSA_P256


def public_key_json(key: PrivateKey) -> dict[str, str]:
    """The trust.json key object `{"algorithm", "public"}` of a private key."""
    pub = public_key_of(key)
    return {"algorithm": pub.algorithm, "public": pub.b64}


# --- signing and verifying ----------------------------------------------------


def sign(key: PrivateKey, message: bytes) -> bytes:
    """Raw 64-byte signature; P-256 signatures are emitted low-s for strict verifiers."""
    if isinstance(key, Ed25519PrivateKey):
        return key.sign(message)
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    if s > P256_ORDER // 2:
        s = P256_ORDER - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify_signature(key: PublicKey, message: bytes, signature: bytes) -> bool:
    """True iff `signature` is valid; malformed signatures are simply not valid."""
    if len(signature) != SIGNATURE_LEN:
        return False
    if key.algorithm == ED25519:
        return _verify_ed25519(key.raw, message, signature)
    if key.algorithm == ECDSA_P256:
        return _verify_p256(key.raw, message, signature)
    return False


def _verify_ed25519(raw: bytes, message: bytes, signature: bytes) -> bool:
    if int.from_bytes(signature[32:], "little") >= _L:
        return False  # non-canonical S: the malleable twin of a valid signature
    if _ed25519_is_weak(raw) or _ed25519_is_weak(signature[:32]):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _verify_p256(raw: bytes, message: bytes, signature: bytes) -> bool:
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        return False
    # Normalise high-s like the reference; (r, s) and (r, n - s) are both valid.
    if s > P256_ORDER // 2:
        s = P256_ORDER - s
    try:
        pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
        pub.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


# --- ed25519 point checks -------------------------------------------------------


def _ed25519_decode(enc: bytes) -> tuple[int, int] | None:
    """Affine (x, y) of an encoded point; None if not a canonical point encoding."""
    y = int.from_bytes(enc, "little") & ((1 << 255) - 1)
    sign = enc[31] >> 7
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P != 0:
        return None
    if x == 0 and sign == 1:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _ed25519_add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2 % _P
    x3 = (x1 * y2 + y1 * x2) * pow(1 + t, _P - 2, _P) % _P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, _P - 2, _P) % _P
    return x3, y3


@functools.lru_cache(maxsize=4096)
def _ed25519_is_weak(enc: bytes) -> bool:
    """Not a canonical point, or a point of order dividing the cofactor 8."""
    point = _ed25519_decode(enc)
    if point is None:
        return True
    for _ in range(3):
        point = _ed25519_add(point, point)
    return point == (0, 1)


# --- private keys ---------------------------------------------------------------


def load_private_key(data: bytes, *, source: str = "private key") -> PrivateKey:
    """A private key from a file's bytes.

    Accepted: a raw 32-byte ed25519 seed, its 64-character hex, a PEM private key
    (PKCS#8 ed25519 or P-256, SEC1 P-256) or an unencrypted OpenSSH private key.
    """
    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN"):
        return _load_pem(stripped, source)
    if len(data) == 32:
        return Ed25519PrivateKey.from_private_bytes(data)
    if len(stripped) == 64:
        try:
            seed = bytes.fromhex(stripped.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
        else:
            return Ed25519PrivateKey.from_private_bytes(seed)
    raise ParseError(
        source,
        "",
        f"not a private key ({len(data)} bytes; want a raw 32-byte ed25519 seed, "
        "its hex, a PKCS#8 PEM or an OpenSSH private key)",
    )


def _load_pem(data: bytes, source: str) -> PrivateKey:
    key: Any
    try:
        if data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # cryptography's signal for "needs a password"
        raise ParseError(source, "", "encrypted private keys are not supported") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ParseError(source, "", f"not a usable PEM private key ({exc})") from exc
    if isinstance(key, Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    kind = type(key).__name__
    raise ParseError(source, "", f"unsupported key type {kind}; want ed25519 or P-256")


def private_key_from_seed(algorithm: str, seed: bytes) -> PrivateKey:
    """A new key from caller-supplied random bytes (the core owns no RNG).

    ed25519 takes 32 bytes; P-256 takes P256_SEED_LEN bytes reduced into [1, n-1].
    """
    if algorithm == ED25519:
        if len(seed) != 32:
            raise ValueError("ed25519 seed must be 32 bytes")
        return Ed25519PrivateKey.from_private_bytes(seed)
    if algorithm == ECDSA_P256:
        if len(seed) < P256_SEED_LEN:
            raise ValueError(f"P-256 seed must be at least {P256_SEED_LEN} bytes")
        scalar = int.from_bytes(seed, "big") % (P256_ORDER - 1) + 1
        return ec.derive_private_key(scalar, ec.SECP256R1())
    raise ValueError(f"unknown algorithm {algorithm!r}")


def seed_len(algorithm: str) -> int:
    """How many random bytes `private_key_from_seed` wants for `algorithm`."""
    return 32 if algorithm == ED25519 else P256_SEED_LEN


def private_key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
