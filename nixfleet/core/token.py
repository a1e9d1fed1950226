"""Bootstrap tokens (protocol §2.5): an org-root-signed claim that lets one host enroll.

`{version:1, claims:{hostname, expectedPubkeyFingerprint, issuedAt, expiresAt, nonce},
signature}`; the signature is base64 ed25519 over JCS(claims).

The reference re-serialises its claims struct before verifying, so `mint_token`
emits timestamps in RFC 3339 `Z` form with whole seconds: those survive any
re-serialisation byte for byte. `verify_token` checks JCS of the claims as received.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import freshness
from .canonical import canonical_bytes
from .errors import BadInput, ParseError, VerifyError
from .hostkey import normalize_fingerprint
from .idents import HOSTNAME
from .jsonfields import Reader
from .signing import ED25519, parse_public_key, sign, verify_signature
from .timeutil import format_instant, parse_instant
from .trust import KeyInForce, Trust, keys_at

TOKEN_VERSION = 1
NONCE_BYTES = 16
DEFAULT_VALIDITY = timedelta(hours=24)

BAD_VERSION = "bad-version"
NO_TRUST_ROOTS = "no-trust-roots"
BAD_SIGNATURE = "bad-signature"
REJECT_BEFORE = "reject-before"
NOT_YET_VALID = "not-yet-valid"
EXPIRED = "expired"


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenClaims:
    hostname: str
    expected_pubkey_fingerprint: str
    issued_at: str
    """RFC 3339 text exactly as signed."""
    expires_at: str
    nonce: str
    """32 lowercase hex characters (16 random bytes)."""

    @property
    def issued_at_dt(self) -> datetime:
        return parse_instant(self.issued_at, source="token", field="claims.issuedAt")

    @property
    def expires_at_dt(self) -> datetime:
        return parse_instant(self.expires_at, source="token", field="claims.expiresAt")


@dataclass(frozen=True, slots=True, kw_only=True)
class BootstrapToken:
    version: int
    claims: TokenClaims
    signature: str
    """base64 of the raw 64-byte ed25519 signature over JCS(claims)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedToken:
    claims: TokenClaims
    key: KeyInForce
    """The orgRootKey entry that verified it (`current` or `previous` during rotation)."""


# --- JSON ---------------------------------------------------------------------------


def dump_claims(c: TokenClaims) -> dict[str, Any]:
    return {
        "hostname": c.hostname,
        "expectedPubkeyFingerprint": c.expected_pubkey_fingerprint,
        "issuedAt": c.issued_at,
        "expiresAt": c.expires_at,
        "nonce": c.nonce,
    }


def dump_token(t: BootstrapToken) -> dict[str, Any]:
    return {"version": t.version, "claims": dump_claims(t.claims), "signature": t.signature}


def claims_message(c: TokenClaims) -> bytes:
    """The signed bytes: JCS of the claims object."""
    return canonical_bytes(dump_claims(c), source="token claims")


def parse_token(value: Any, *, source: str = "token") -> BootstrapToken:
    """Validate a parsed token's shape; `verify_token` decides whether to trust it."""
    r = Reader.root(value, source)
    c = r.sub("claims")
    for key in ("issuedAt", "expiresAt"):
        parse_instant(c.str(key), source=source, field=c.field(key))
    return BootstrapToken(
        version=r.int("version"),
        claims=TokenClaims(
            hostname=c.str("hostname"),
            expected_pubkey_fingerprint=c.str("expectedPubkeyFingerprint"),
            issued_at=c.str("issuedAt"),
            expires_at=c.str("expiresAt"),
            nonce=c.str("nonce"),
        ),
        signature=r.str("signature"),
    )


# --- minting and verifying ---------------------------------------------------------------


def mint_token(
    *,
    hostname: str,
    expected_pubkey_fingerprint: str,
    org_root_key: Ed25519PrivateKey,
    now: datetime,
    nonce_bytes: bytes,
    validity: timedelta = DEFAULT_VALIDITY,
) -> BootstrapToken:
    """Sign a token valid from `now` (whole seconds) for `validity`.

    `nonce_bytes` are 16 random bytes from the caller; the fingerprint may be given
    in OpenSSH `SHA256:` form and is stored in the 44-character padded form.
    """
    if not HOSTNAME.test(hostname):  # the CN of the host's CSR, then its checkin hostname
        raise BadInput(f"mint-token: hostname {hostname!r} is not a bare host name")
    if len(nonce_bytes) != NONCE_BYTES:
        raise BadInput(f"mint-token: nonce must be {NONCE_BYTES} bytes, got {len(nonce_bytes)}")
    if validity <= timedelta(0):
        raise BadInput("mint-token: validity must be positive")
    if not isinstance(org_root_key, Ed25519PrivateKey):
        raise BadInput("mint-token: the org root key must be ed25519")
    issued_at = now.replace(microsecond=0)
    claims = TokenClaims(
        hostname=hostname,
        expected_pubkey_fingerprint=normalize_fingerprint(
            expected_pubkey_fingerprint, source="mint-token: --csr-pubkey-fingerprint"
        ),
        issued_at=format_instant(issued_at),
        expires_at=format_instant(issued_at + validity),
        nonce=nonce_bytes.hex(),
    )
    signature = sign(org_root_key, claims_message(claims))
    return BootstrapToken(
        version=TOKEN_VERSION,
        claims=claims,
        signature=base64.b64encode(signature).decode("ascii"),
    )


def nonce_allowlist_entry(t: BootstrapToken) -> dict[str, str]:
    """The `bootstrapNonces` entry that admits this token on a CP with an allowlist."""
    return {
        "nonce": t.claims.nonce,
        "hostname": t.claims.hostname,
        "expiresAt": t.claims.expires_at,
    }


def verify_token(token: BootstrapToken, trust: Trust, now: datetime) -> VerifiedToken:
    """Version, trust roots, signature (orgRootKey, ed25519 only), rejectBefore, window.

    The signature is checked before the window, so a tampered `expiresAt` reads as
    `bad-signature`, not as `expired`.
    """
    if token.version != TOKEN_VERSION:
        raise VerifyError(BAD_VERSION, f"token version {token.version}, want {TOKEN_VERSION}")
    slot = trust.org_root_key
    # orgRootKey keys must be ed25519; any other key in the slot is never used.
    keys = [] if slot is None else [k for k in keys_at(slot, now) if k.key.algorithm == ED25519]
    if slot is None or not keys:
        raise VerifyError(NO_TRUST_ROOTS, "trust.json orgRootKey has no ed25519 key in force")
    key = _verifying_key(keys, token)
    claims = token.claims
    issued_at, expires_at = claims.issued_at_dt, claims.expires_at_dt
    reject_before = slot.reject_before_at
    if reject_before is not None and issued_at < reject_before:
        raise VerifyError(
            REJECT_BEFORE, f"issuedAt {claims.issued_at} < rejectBefore {slot.reject_before}"
        )
    if freshness.is_token_not_yet_valid(issued_at, now):
        raise VerifyError(
            NOT_YET_VALID, f"issuedAt {claims.issued_at} is after {format_instant(now)}"
        )
    if freshness.is_token_expired(expires_at, now):
        raise VerifyError(
            EXPIRED, f"expiresAt {claims.expires_at} is not after {format_instant(now)}"
        )
    return VerifiedToken(claims=claims, key=key)


def _verifying_key(keys: list[KeyInForce], token: BootstrapToken) -> KeyInForce:
    try:
        signature = base64.b64decode(token.signature.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise VerifyError(BAD_SIGNATURE, "signature is not base64") from exc
    try:
        message = claims_message(token.claims)
    except ParseError as exc:
        raise VerifyError(BAD_SIGNATURE, f"claims cannot be canonicalized ({exc})") from exc
    for candidate in keys:
        try:
            public = parse_public_key(candidate.key.algorithm, candidate.key.public)
        except VerifyError:
            continue  # a malformed root key verifies nothing; the others may
        if verify_signature(public, message, signature):
            return candidate
    roles = ", ".join(k.role for k in keys)
    raise VerifyError(BAD_SIGNATURE, f"no orgRootKey in force ({roles}) signed these claims")

