"""Sidecar verification: every reason of protocol §3.3, and the order they come in."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nixfleet.core.canonical import canonicalize, sha256_hex
from nixfleet.core.errors import VerifyError
from nixfleet.core.signing import (
    ECDSA_P256,
    ED25519,
    PrivateKey,
    private_key_from_seed,
    public_key_json,
    sign,
)
from nixfleet.core.trust import Slot, TrustKey
from nixfleet.core.verify import verify_artifact, verify_rollout_manifest

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
WINDOW = 3600

CI_ED = private_key_from_seed(ED25519, bytes([1]) * 32)
CI_P256 = private_key_from_seed(ECDSA_P256, bytes([2]) * 40)
OLD_ED = private_key_from_seed(ED25519, bytes([3]) * 32)
NEXT_ED = private_key_from_seed(ED25519, bytes([4]) * 32)
STRANGER = private_key_from_seed(ED25519, bytes([5]) * 32)


def tkey(key: PrivateKey) -> TrustKey:
    return TrustKey(**public_key_json(key))


def doc(signed_at: str | None = "2025-06-01T11:30:00Z", **extra: Any) -> bytes:
    # Deliberately not canonical: the signature must cover JCS of these bytes.
    value = {
        "schemaVersion": 1,
        "hosts": {"h1": {"channel": "stable"}},
        "meta": {"schemaVersion": 1, "signedAt": signed_at, "ciCommit": "abc"},
    }
    value.update(extra)
    return json.dumps(value, indent=2).encode()


def sig_for(key: PrivateKey, raw: bytes) -> bytes:
    return sign(key, canonicalize(raw))


def check(raw: bytes, sig: bytes, slot: Slot, now: datetime = NOW, window: int = WINDOW) -> str:
    """The rejection reason, or 'ok'."""
    try:
        verify_artifact(raw, sig, slot, now=now, window_secs=window)
    except VerifyError as exc:
        return exc.reason
    return "ok"


@pytest.mark.parametrize("key", [CI_ED, CI_P256], ids=["ed25519", "ecdsa-p256"])
def test_valid_artifact_returns_what_was_verified(key: PrivateKey) -> None:
    raw = doc()
    result = verify_artifact(raw, sig_for(key, raw), Slot(current=tkey(key)), now=NOW,
                             window_secs=WINDOW)
    assert result.canonical == canonicalize(raw)
    assert result.canonical != raw  # proves the JCS path, not the raw bytes, was signed
    assert result.value["hosts"] == {"h1": {"channel": "stable"}}
    assert result.signed_at == datetime(2025, 6, 1, 11, 30, tzinfo=UTC)
    assert result.signed_at_text == "2025-06-01T11:30:00Z"
    assert result.key.role == "current"
    assert result.key.key == tkey(key)


def test_signature_over_raw_bytes_is_not_accepted() -> None:
    raw = doc()
    assert check(raw, sign(CI_ED, raw), Slot(current=tkey(CI_ED))) == "bad-signature"


def test_reformatted_bytes_with_same_jcs_still_verify() -> None:
    raw = doc()
    sig = sig_for(CI_ED, raw)
    compact = json.dumps(json.loads(raw), separators=(",", ":")).encode()
    assert check(compact, sig, Slot(current=tkey(CI_ED))) == "ok"


def test_signature_algorithm_in_meta_is_ignored() -> None:
    # meta says ed25519 but the slot's key is P-256: the slot decides.
    raw = doc()
    value = json.loads(raw)
    value["meta"]["signatureAlgorithm"] = "ed25519"
    raw = json.dumps(value).encode()
    assert check(raw, sig_for(CI_P256, raw), Slot(current=tkey(CI_P256))) == "ok"
    value["meta"]["signatureAlgorithm"] = "ecdsa-p256"
    raw = json.dumps(value).encode()
    assert check(raw, sig_for(CI_ED, raw), Slot(current=tkey(CI_ED))) == "ok"


# --- each reason -----------------------------------------------------------------------------

SLOT = Slot(current=tkey(CI_ED))
GOOD = doc()
GOOD_SIG = sig_for(CI_ED, GOOD)


def _signed(raw: bytes) -> tuple[bytes, bytes]:
    return raw, sig_for(CI_ED, raw)


@pytest.mark.parametrize(
    ("raw", "sig", "slot", "reason"),
    [
        (GOOD, GOOD_SIG, Slot(), "no-trust-roots"),
        (GOOD, GOOD_SIG, Slot(successor=tkey(CI_ED)), "no-trust-roots"),
        (b"\xff\xfe{}", GOOD_SIG, SLOT, "parse"),
        (b"{not json", GOOD_SIG, SLOT, "parse"),
        (b'{"a":1,"a":2}', GOOD_SIG, SLOT, "parse"),
        (b'{"n":9007199254740993}', GOOD_SIG, SLOT, "canonicalize"),
        (GOOD, GOOD_SIG[:-1], SLOT, "bad-signature"),
        (GOOD, bytes([GOOD_SIG[0] ^ 1]) + GOOD_SIG[1:], SLOT, "bad-signature"),
        (GOOD.replace(b"stable", b"stablf"), GOOD_SIG, SLOT, "bad-signature"),
        (GOOD, sig_for(STRANGER, GOOD), SLOT, "bad-signature"),
        (GOOD, GOOD_SIG, Slot(current=TrustKey(algorithm="ed25519", public="@@")), "bad-pubkey"),
        (GOOD, GOOD_SIG, Slot(current=TrustKey(algorithm="ml-dsa", public="AA")),
         "unsupported-algorithm"),
        (*_signed(doc(schemaVersion=2)), SLOT, "schema-version"),
        (*_signed(b'[1, 2]'), SLOT, "schema-version"),
        (*_signed(doc(signed_at=None)), SLOT, "unsigned"),
        (*_signed(b'{"schemaVersion":1,"meta":{"schemaVersion":1}}'), SLOT, "unsigned"),
        (*_signed(b'{"schemaVersion":1}'), SLOT, "unsigned"),
        (*_signed(doc(signed_at="last tuesday")), SLOT, "parse"),
        (*_signed(doc(signed_at="2025-06-01T10:58:59Z")), SLOT, "stale"),
        (*_signed(doc(signed_at="2025-06-01T12:01:01Z")), SLOT, "future-dated"),
        (GOOD, GOOD_SIG, Slot(current=tkey(CI_ED), reject_before="2025-06-01T11:30:00.000001Z"),
         "reject-before"),
    ],
    ids=[
        "no-keys", "successor-without-retire", "not-utf8", "not-json", "duplicate-key",
        "unsafe-int", "short-sig", "flipped-sig", "flipped-byte", "wrong-key", "bad-pubkey",
        "unknown-alg", "schema-2", "not-object", "signedAt-null", "signedAt-missing",
        "meta-missing", "signedAt-garbage", "stale", "future", "reject-before",
    ],
)
def test_reasons(raw: bytes, sig: bytes, slot: Slot, reason: str) -> None:
    assert check(raw, sig, slot) == reason


@pytest.mark.parametrize(
    ("signed_at", "reason"),
    [
        ("2025-06-01T10:59:00Z", "ok"),  # exactly window + 60 s old
        ("2025-06-01T10:58:59.999999Z", "stale"),
        ("2025-06-01T12:01:00Z", "ok"),  # exactly 60 s ahead
        ("2025-06-01T12:01:00.000001Z", "future-dated"),
        ("2025-06-01T12:01:00.000000999Z", "ok"),  # nanoseconds truncated, not rounded up
        ("2025-06-01T14:00:00+02:00", "ok"),
    ],
)
def test_freshness_boundaries(signed_at: str, reason: str) -> None:
    assert check(*_signed(doc(signed_at=signed_at)), SLOT) == reason


def test_reject_before_boundary_is_inclusive() -> None:
    slot = Slot(current=tkey(CI_ED), reject_before="2025-06-01T11:30:00Z")
    assert check(GOOD, GOOD_SIG, slot) == "ok"


# --- order: an earlier check wins over a later one -----------------------------------------


def test_order_no_trust_roots_before_parse() -> None:
    assert check(b"garbage", b"", Slot()) == "no-trust-roots"


def test_order_parse_before_signature() -> None:
    assert check(b"garbage", b"", SLOT) == "parse"


def test_order_signature_before_schema_and_freshness() -> None:
    raw = doc(signed_at="2000-01-01T00:00:00Z", schemaVersion=7)
    assert check(raw, sig_for(STRANGER, raw), SLOT) == "bad-signature"


def test_order_schema_before_unsigned() -> None:
    assert check(*_signed(doc(signed_at=None, schemaVersion=2)), SLOT) == "schema-version"


def test_order_reject_before_before_stale() -> None:
    raw, sig = _signed(doc(signed_at="2000-01-01T00:00:00Z"))
    slot = Slot(current=tkey(CI_ED), reject_before="2024-01-01T00:00:00Z")
    assert check(raw, sig, slot) == "reject-before"
    assert check(raw, sig, SLOT) == "stale"


# --- rotation ------------------------------------------------------------------------------


def test_rotation_previous_key_still_verifies() -> None:
    slot = Slot(current=tkey(CI_ED), previous=tkey(OLD_ED))
    result = verify_artifact(GOOD, sig_for(OLD_ED, GOOD), slot, now=NOW, window_secs=WINDOW)
    assert result.key.role == "previous"


def test_rotation_mixed_algorithms() -> None:
    slot = Slot(current=tkey(CI_P256), previous=tkey(CI_ED))
    assert check(GOOD, sig_for(CI_P256, GOOD), slot) == "ok"
    assert check(GOOD, GOOD_SIG, slot) == "ok"


def test_rotation_successor_until_retire_at() -> None:
    slot = Slot(current=tkey(CI_ED), successor=tkey(NEXT_ED), retire_at="2025-06-01T12:00:30Z")
    raw, sig = doc(), sig_for(NEXT_ED, doc())
    result = verify_artifact(raw, sig, slot, now=NOW, window_secs=WINDOW)
    assert result.key.role == "successor"
    at_retire = NOW + timedelta(seconds=30)
    assert check(raw, sig, slot, now=at_retire) == "bad-signature"
    assert check(raw, GOOD_SIG, slot, now=at_retire) == "ok"  # current unaffected


def test_reject_before_applies_whichever_key_signed() -> None:
    slot = Slot(
        current=tkey(CI_ED), previous=tkey(OLD_ED), reject_before="2025-06-01T11:45:00Z"
    )
    assert check(GOOD, sig_for(OLD_ED, GOOD), slot) == "reject-before"
    assert check(GOOD, GOOD_SIG, slot) == "reject-before"
    newer, newer_sig = _signed(doc(signed_at="2025-06-01T11:50:00Z"))
    assert check(newer, newer_sig, slot) == "ok"


def test_malformed_current_key_does_not_block_previous() -> None:
    slot = Slot(current=TrustKey(algorithm="ed25519", public="AAAA"), previous=tkey(OLD_ED))
    assert check(GOOD, sig_for(OLD_ED, GOOD), slot) == "ok"
    assert check(GOOD, GOOD_SIG, slot) == "bad-signature"


def test_detail_is_one_line() -> None:
    with pytest.raises(VerifyError) as err:
        verify_artifact(*_signed(doc(signed_at="2025-06-01T10:00:00Z")), SLOT, now=NOW,
                        window_secs=WINDOW)
    assert err.value.reason == "stale"
    assert str(err.value) == (
        "stale: signedAt 2025-06-01T10:00:00Z is 7200 s old at 2025-06-01T12:00:00Z, "
        "window 3600 s + 60 s"
    )


# --- rollout manifests ----------------------------------------------------------------------


def test_rollout_manifest_id_and_fixed_window() -> None:
    raw, sig = _signed(doc(signed_at="2025-06-01T11:00:00Z"))
    rollout_id = sha256_hex(canonicalize(raw))
    result = verify_rollout_manifest(raw, sig, SLOT, now=NOW, rollout_id=rollout_id)
    assert result.canonical == canonicalize(raw)
    with pytest.raises(VerifyError) as err:
        verify_rollout_manifest(raw, sig, SLOT, now=NOW, rollout_id="0" * 64)
    assert err.value.reason == "rollout-id-mismatch"
    with pytest.raises(VerifyError) as err:
        verify_rollout_manifest(raw, sig, SLOT, now=NOW + timedelta(seconds=61),
                                rollout_id=rollout_id)
    assert err.value.reason == "stale"


def test_future_dated_names_the_clock_skew_tolerance() -> None:
    """Catalogue `harness-future-dated-rejection`: the error names future-dating and the
    60 s tolerance (an operator must tell a stolen pre-signed key from a skewed clock)."""
    raw, sig = _signed(doc(signed_at="2025-06-03T12:00:00Z"))
    with pytest.raises(VerifyError) as caught:
        verify_artifact(raw, sig, SLOT, now=NOW, window_secs=86400)
    assert caught.value.reason == "future-dated"
    assert "172800 s ahead" in str(caught.value)
    assert "60 s" in str(caught.value) and "tolerance" in str(caught.value)
