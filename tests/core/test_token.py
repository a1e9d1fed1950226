"""Bootstrap tokens (protocol §2.5): mint, parse, dump, verify, and every named reason."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nixfleet.core.canonical import canonical_bytes
from nixfleet.core.errors import BadInput, ParseError, VerifyError
from nixfleet.core.signing import ECDSA_P256, private_key_from_seed, public_key_json
from nixfleet.core.token import (
    BootstrapToken,
    TokenClaims,
    dump_token,
    mint_token,
    nonce_allowlist_entry,
    parse_token,
    verify_token,
)
from nixfleet.core.trust import Slot, Trust, TrustKey

NOW = datetime(2025, 6, 1, 12, 0, 0, 654321, tzinfo=UTC)
ROOT = Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32)
OLD_ROOT = Ed25519PrivateKey.from_private_bytes(bytes([8]) * 32)
OTHER = Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32)
FP = base64.b64encode(bytes(range(32))).decode()
NONCE = bytes.fromhex("00112233445566778899aabbccddeeff")


def tkey(key: Ed25519PrivateKey) -> TrustKey:
    return TrustKey(**public_key_json(key))


def trust(org: Slot | None) -> Trust:
    return Trust(schema_version=1, ci_release_key=Slot(), cache_keys=(), org_root_key=org)


TRUST = trust(Slot(current=tkey(ROOT), previous=tkey(OLD_ROOT)))


def mint(key: Any = ROOT, **kw: Any) -> BootstrapToken:
    args: dict[str, Any] = {
        "hostname": "newhost",
        "expected_pubkey_fingerprint": FP,
        "org_root_key": key,
        "now": NOW,
        "nonce_bytes": NONCE,
    }
    args.update(kw)
    return mint_token(**args)


def reason(token: BootstrapToken, t: Trust = TRUST, now: datetime = NOW) -> str:
    try:
        verify_token(token, t, now)
    except VerifyError as exc:
        return exc.reason
    return "ok"


def test_minted_shape() -> None:
    token = mint()
    assert dump_token(token) == {
        "version": 1,
        "claims": {
            "hostname": "newhost",
            "expectedPubkeyFingerprint": FP,
            "issuedAt": "2025-06-01T12:00:00Z",  # whole seconds, Z: survives re-serialising
            "expiresAt": "2025-06-02T12:00:00Z",  # 24 h default
            "nonce": "00112233445566778899aabbccddeeff",
        },
        "signature": token.signature,
    }
    sig = base64.b64decode(token.signature)
    assert len(sig) == 64
    # The signature is over JCS(claims), checked with the library directly.
    ROOT.public_key().verify(sig, canonical_bytes(dump_token(token)["claims"]))


def test_minted_token_verifies_with_current_key() -> None:
    verified = verify_token(mint(), TRUST, NOW)
    assert verified.key.role == "current"
    assert verified.claims.hostname == "newhost"


def test_previous_key_verifies_during_rotation() -> None:
    assert verify_token(mint(OLD_ROOT), TRUST, NOW).key.role == "previous"


def test_key_outside_current_and_previous_is_bad_signature() -> None:
    assert reason(mint(OTHER)) == "bad-signature"
    # After the grace window (previous moved to null) the old key stops working.
    assert reason(mint(OLD_ROOT), trust(Slot(current=tkey(ROOT), previous=None))) == (
        "bad-signature"
    )


def test_successor_verifies_until_retire_at() -> None:
    slot = Slot(current=tkey(ROOT), successor=tkey(OTHER), retire_at="2025-06-01T13:00:00Z")
    assert verify_token(mint(OTHER), trust(slot), NOW).key.role == "successor"
    assert reason(mint(OTHER), trust(slot), datetime(2025, 6, 1, 13, tzinfo=UTC)) == (
        "bad-signature"
    )


def test_reject_before_refuses_older_tokens() -> None:
    slot = Slot(current=tkey(ROOT), reject_before="2025-06-01T12:00:01Z")
    assert reason(mint(), trust(slot)) == "reject-before"
    slot = Slot(current=tkey(ROOT), reject_before="2025-06-01T12:00:00Z")
    assert reason(mint(), trust(slot)) == "ok"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hostname", "otherhost"),
        ("expected_pubkey_fingerprint", base64.b64encode(bytes(32)).decode()),
        ("issued_at", "2025-06-01T11:00:00Z"),
        ("expires_at", "2025-06-09T12:00:00Z"),
        ("nonce", "ffffffffffffffffffffffffffffffff"),
        ("issued_at", "2025-06-01T12:00:00+00:00"),  # same instant, different signed bytes
    ],
)
def test_tampering_any_claim_is_bad_signature(field: str, value: str) -> None:
    token = mint()
    tampered = replace(token, claims=replace(token.claims, **{field: value}))
    assert reason(tampered) == "bad-signature"


def test_tampered_expiry_in_the_past_reads_as_bad_signature_not_expired() -> None:
    token = mint()
    tampered = replace(token, claims=replace(token.claims, expires_at="2025-06-01T12:00:00Z"))
    assert reason(tampered) == "bad-signature"


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC), "ok"),  # issuedAt inclusive
        (datetime(2025, 6, 1, 11, 59, 59, 999999, tzinfo=UTC), "not-yet-valid"),
        (datetime(2025, 6, 2, 11, 59, 59, 999999, tzinfo=UTC), "ok"),
        (datetime(2025, 6, 2, 12, 0, 0, tzinfo=UTC), "expired"),  # expiresAt exclusive
        (datetime(2025, 7, 1, tzinfo=UTC), "expired"),
    ],
)
def test_validity_window_has_no_slack(now: datetime, expected: str) -> None:
    assert reason(mint(), now=now) == expected


def test_custom_validity() -> None:
    token = mint(validity=timedelta(hours=1))
    assert token.claims.expires_at == "2025-06-01T13:00:00Z"
    assert reason(token, now=datetime(2025, 6, 1, 13, tzinfo=UTC)) == "expired"


def test_bad_version() -> None:
    assert reason(replace(mint(), version=2)) == "bad-version"


@pytest.mark.parametrize(
    "t",
    [
        trust(None),
        trust(Slot()),
        trust(Slot(current=TrustKey(**public_key_json(private_key_from_seed(ECDSA_P256,
                                                                            bytes(40)))))),
    ],
    ids=["null", "empty", "p256-only"],
)
def test_no_trust_roots(t: Trust) -> None:
    assert reason(mint(), t) == "no-trust-roots"


def test_garbage_signature_is_bad_signature() -> None:
    assert reason(replace(mint(), signature="not base64!")) == "bad-signature"
    assert reason(replace(mint(), signature=base64.b64encode(bytes(64)).decode())) == (
        "bad-signature"
    )
    assert reason(replace(mint(), signature="")) == "bad-signature"


def test_parse_dump_round_trip_and_verify_from_json() -> None:
    token = mint()
    text = json.dumps(dump_token(token), indent=2)
    parsed = parse_token(json.loads(text), source="newhost-token.json")
    assert parsed == token
    assert dump_token(parsed) == json.loads(text)
    assert verify_token(parsed, TRUST, NOW).claims == token.claims


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("signature"), "t.json: signature: missing"),
        (lambda d: d.update(version="1"), "t.json: version: expected an integer, got a string"),
        (lambda d: d["claims"].pop("nonce"), "t.json: claims.nonce: missing"),
        (lambda d: d["claims"].update(issuedAt="soon"),
         "t.json: claims.issuedAt: not an RFC 3339 timestamp"),
        (lambda d: d.update(claims=[]), "t.json: claims: expected an object, got an array"),
    ],
)
def test_parse_errors_name_fields(
    mutate: Callable[[dict[str, Any]], object], message: str
) -> None:
    d = dump_token(mint())
    mutate(d)
    with pytest.raises(ParseError) as err:
        parse_token(d, source="t.json")
    assert str(err.value).startswith(message)


def test_mint_normalises_openssh_fingerprint_and_validates_inputs() -> None:
    token = mint(expected_pubkey_fingerprint="SHA256:" + FP.rstrip("="))
    assert token.claims.expected_pubkey_fingerprint == FP
    with pytest.raises(BadInput, match="decodes to"):
        mint(expected_pubkey_fingerprint="abcd")
    with pytest.raises(BadInput, match="not a bare host name"):
        mint(hostname="new host")
    with pytest.raises(BadInput, match="nonce must be 16 bytes"):
        mint(nonce_bytes=bytes(8))
    with pytest.raises(BadInput, match="validity must be positive"):
        mint(validity=timedelta(0))
    with pytest.raises(BadInput, match="must be ed25519"):
        mint(private_key_from_seed(ECDSA_P256, bytes(40)))


def test_nonce_allowlist_entry() -> None:
    assert nonce_allowlist_entry(mint()) == {
        "nonce": "00112233445566778899aabbccddeeff",
        "hostname": "newhost",
        "expiresAt": "2025-06-02T12:00:00Z",
    }


def test_claims_keep_received_text() -> None:
    c = TokenClaims(
        hostname="h",
        expected_pubkey_fingerprint=FP,
        issued_at="2025-06-01T12:00:00.123456789Z",
        expires_at="2025-06-02T12:00:00Z",
        nonce="00" * 16,
    )
    assert c.issued_at_dt == datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
