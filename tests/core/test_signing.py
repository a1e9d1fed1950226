"""ed25519 and P-256 signatures: wire forms, high-s acceptance, strictness, key loading."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from nixfleet.core import signing
from nixfleet.core.errors import ParseError, VerifyError
from nixfleet.core.signing import (
    ECDSA_P256,
    ED25519,
    P256_ORDER,
    load_private_key,
    parse_public_key,
    private_key_from_seed,
    private_key_pem,
    public_key_json,
    public_key_of,
    sign,
    verify_signature,
)

# A real P-256 vector whose s is high (s > n/2), as TPM2_Sign emits half the time.
# Generated once with `cryptography` from the scalar below and kept fixed.
P256_SCALAR = 0x1D2C3B4A5968778695A4B3C2D1E0F0E1D2C3B4A5968778695A4B3C2D1E0F0E1
P256_PUBLIC = (
    "uJqSZBoEObHXujgQwo98uI+OXo9sEOFWzGDmW7nUF2OqoSXEKYe1UjUcE5HySpgiiqA8yJnAPwtDCUBuJtDA8Q=="
)
P256_MESSAGE = b'{"meta":{"signedAt":"2025-01-01T00:00:00Z"},"schemaVersion":1}'
P256_HIGH_S_SIG = bytes.fromhex(
    "d76bc85aaa9e6974b4476bb1f12329a2198dba572b4e154d767779009a4e0343"
    "b6f5fac683fbbdee0902d69e6ea8a901a420675fb7fc362c7f2cbeac4c6f046a"
)

# RFC 8032 §7.1 TEST 1 (empty message).
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493
ED25519_BASEPOINT = bytes.fromhex("58" + "66" * 31)


def _r_s(sig: bytes) -> tuple[int, int]:
    return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")


def _p256_sig(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


P256_KEY = parse_public_key(ECDSA_P256, P256_PUBLIC)


# --- P-256 high-s (seed 000 "BadSignature") --------------------------------------------


def test_vector_is_really_high_s_and_matches_its_key() -> None:
    r, s = _r_s(P256_HIGH_S_SIG)
    assert s > P256_ORDER // 2
    derived = ec.derive_private_key(P256_SCALAR, ec.SECP256R1())
    assert public_key_of(derived).b64 == P256_PUBLIC
    # OpenSSL agrees the DER form is valid, independent of our code.
    derived.public_key().verify(
        encode_dss_signature(r, s), P256_MESSAGE, ec.ECDSA(hashes.SHA256())
    )


def test_high_s_signature_verifies() -> None:
    assert verify_signature(P256_KEY, P256_MESSAGE, P256_HIGH_S_SIG) is True


def test_low_s_twin_verifies() -> None:
    r, s = _r_s(P256_HIGH_S_SIG)
    twin = _p256_sig(r, P256_ORDER - s)
    assert _r_s(twin)[1] < P256_ORDER // 2
    assert verify_signature(P256_KEY, P256_MESSAGE, twin) is True


def test_high_s_over_wrong_message_fails() -> None:
    wrong = P256_MESSAGE.replace(b"2025", b"2026")
    assert verify_signature(P256_KEY, wrong, P256_HIGH_S_SIG) is False


@pytest.mark.parametrize(
    "sig",
    [
        b"",
        P256_HIGH_S_SIG[:63],
        P256_HIGH_S_SIG + b"\x00",
        _p256_sig(0, 1),
        _p256_sig(1, 0),
        _p256_sig(P256_ORDER, _r_s(P256_HIGH_S_SIG)[1]),
        _p256_sig(_r_s(P256_HIGH_S_SIG)[0], P256_ORDER),
        _p256_sig(_r_s(P256_HIGH_S_SIG)[0], P256_ORDER + 1),
        b"\xff" * 64,
        b"0" * 64,
    ],
    ids=["empty", "short", "long", "r0", "s0", "r=n", "s=n", "s>n", "ff", "ascii"],
)
def test_malformed_p256_signatures_are_not_valid(sig: bytes) -> None:
    assert verify_signature(P256_KEY, P256_MESSAGE, sig) is False


def test_p256_sign_emits_raw_low_s_and_verifies() -> None:
    key = ec.derive_private_key(P256_SCALAR, ec.SECP256R1())
    for i in range(16):  # ~half of OpenSSL's signatures are high-s before normalising
        msg = b"message %d" % i
        sig = sign(key, msg)
        assert len(sig) == 64
        assert 0 < _r_s(sig)[1] <= P256_ORDER // 2
        assert verify_signature(P256_KEY, msg, sig) is True


# --- ed25519 ---------------------------------------------------------------------------


def test_ed25519_rfc8032_vector() -> None:
    key = Ed25519PrivateKey.from_private_bytes(RFC8032_SEED)
    assert public_key_of(key).raw == RFC8032_PUBLIC
    assert sign(key, b"") == RFC8032_SIG
    pub = parse_public_key(ED25519, base64.b64encode(RFC8032_PUBLIC).decode())
    assert verify_signature(pub, b"", RFC8032_SIG) is True
    assert verify_signature(pub, b"x", RFC8032_SIG) is False


def test_ed25519_malleable_s_plus_l_is_rejected() -> None:
    pub = parse_public_key(ED25519, base64.b64encode(RFC8032_PUBLIC).decode())
    s = int.from_bytes(RFC8032_SIG[32:], "little") + ED25519_ORDER
    twin = RFC8032_SIG[:32] + s.to_bytes(32, "little")
    assert verify_signature(pub, b"", twin) is False


def test_ed25519_weak_key_forgery_is_rejected() -> None:
    identity = bytes([1]) + bytes(31)
    forged = ED25519_BASEPOINT + (1).to_bytes(32, "little")  # R = B, S = 1: S·B = R + k·0
    # OpenSSL alone accepts this for any message; that is why the strict check exists.
    Ed25519PublicKey.from_public_bytes(identity).verify(forged, b"any message")
    with pytest.raises(VerifyError) as err:
        parse_public_key(ED25519, base64.b64encode(identity).decode())
    assert err.value.reason == "bad-pubkey"
    raw = signing.PublicKey(algorithm=ED25519, raw=identity)
    assert verify_signature(raw, b"any message", forged) is False


def test_ed25519_small_order_r_is_rejected() -> None:
    key = Ed25519PrivateKey.from_private_bytes(RFC8032_SEED)
    pub = parse_public_key(ED25519, public_key_json(key)["public"])
    sig = bytes([1]) + bytes(31) + RFC8032_SIG[32:]  # R = identity
    assert verify_signature(pub, b"", sig) is False


@pytest.mark.parametrize("sig", [b"", RFC8032_SIG[:63], RFC8032_SIG + b"\x00"])
def test_ed25519_wrong_length_is_not_valid(sig: bytes) -> None:
    pub = parse_public_key(ED25519, base64.b64encode(RFC8032_PUBLIC).decode())
    assert verify_signature(pub, b"", sig) is False


def test_basepoint_is_not_weak() -> None:
    # Guards the point arithmetic: a prime-order point must pass the small-order check.
    assert parse_public_key(ED25519, base64.b64encode(ED25519_BASEPOINT).decode()).raw == (
        ED25519_BASEPOINT
    )


# --- public key decoding ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "public", "reason"),
    [
        ("rsa", "AAAA", "unsupported-algorithm"),
        (ED25519, "not base64!", "bad-pubkey"),
        (ED25519, base64.b64encode(bytes(31)).decode(), "bad-pubkey"),
        (ECDSA_P256, base64.b64encode(b"\x04" + P256_KEY.raw).decode(), "bad-pubkey"),
        (ECDSA_P256, base64.b64encode(bytes(64)).decode(), "bad-pubkey"),
    ],
    ids=["unknown-alg", "not-base64", "ed-short", "p256-with-04", "p256-off-curve"],
)
def test_bad_public_keys(algorithm: str, public: str, reason: str) -> None:
    with pytest.raises(VerifyError) as err:
        parse_public_key(algorithm, public)
    assert err.value.reason == reason


def test_public_key_json_forms() -> None:
    ed = Ed25519PrivateKey.from_private_bytes(RFC8032_SEED)
    assert public_key_json(ed) == {
        "algorithm": "ed25519",
        "public": base64.b64encode(RFC8032_PUBLIC).decode(),
    }
    p = ec.derive_private_key(P256_SCALAR, ec.SECP256R1())
    assert public_key_json(p) == {"algorithm": "ecdsa-p256", "public": P256_PUBLIC}
    assert len(base64.b64decode(P256_PUBLIC)) == 64


# --- private key loading ---------------------------------------------------------------


def _ed_pub(key: signing.PrivateKey) -> bytes:
    return public_key_of(key).raw


def test_load_raw_seed_hex_and_pkcs8() -> None:
    assert _ed_pub(load_private_key(RFC8032_SEED)) == RFC8032_PUBLIC
    assert _ed_pub(load_private_key(RFC8032_SEED.hex().encode() + b"\n")) == RFC8032_PUBLIC
    assert _ed_pub(load_private_key(RFC8032_SEED.hex().upper().encode())) == RFC8032_PUBLIC
    pem = private_key_pem(Ed25519PrivateKey.from_private_bytes(RFC8032_SEED))
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert _ed_pub(load_private_key(pem)) == RFC8032_PUBLIC
    # protocol §3.4: PKCS#8 of an ed25519 seed is a fixed prefix + the seed.
    der = bytes.fromhex("302e020100300506032b657004220420") + RFC8032_SEED
    body = base64.encodebytes(der)
    assert _ed_pub(load_private_key(
        b"-----BEGIN PRIVATE KEY-----\n" + body + b"-----END PRIVATE KEY-----\n"
    )) == RFC8032_PUBLIC


def test_load_p256_pkcs8_and_sec1() -> None:
    key = ec.derive_private_key(P256_SCALAR, ec.SECP256R1())
    loaded = load_private_key(private_key_pem(key))
    assert public_key_json(loaded) == {"algorithm": "ecdsa-p256", "public": P256_PUBLIC}
    sec1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert public_key_json(load_private_key(sec1))["public"] == P256_PUBLIC


def test_load_openssh_private_key() -> None:
    key = Ed25519PrivateKey.from_private_bytes(RFC8032_SEED)
    ssh = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    assert _ed_pub(load_private_key(ssh)) == RFC8032_PUBLIC


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "not a private key"),
        (b"x" * 31, "not a private key"),
        (b"zz" * 32, "not a private key"),
        (b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n", "not a usable PEM"),
    ],
)
def test_load_garbage_is_one_line_parse_error(data: bytes, problem: str) -> None:
    with pytest.raises(ParseError) as err:
        load_private_key(data, source="/keys/org.key")
    assert str(err.value).startswith("/keys/org.key: ")
    assert problem in str(err.value)
    assert "\n" not in str(err.value)


def test_load_encrypted_pem_is_refused() -> None:
    pem = Ed25519PrivateKey.from_private_bytes(RFC8032_SEED).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(ParseError, match="encrypted private keys are not supported"):
        load_private_key(pem, source="k")


def test_load_other_curve_is_refused() -> None:
    pem = private_key_pem_any(ec.derive_private_key(7, ec.SECP384R1()))
    with pytest.raises(ParseError, match="unsupported key type"):
        load_private_key(pem, source="k")


def private_key_pem_any(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_private_key_from_seed_is_deterministic() -> None:
    ed = private_key_from_seed(ED25519, RFC8032_SEED)
    assert _ed_pub(ed) == RFC8032_PUBLIC
    seed = bytes(range(40))
    a = private_key_from_seed(ECDSA_P256, seed)
    b = private_key_from_seed(ECDSA_P256, seed)
    assert public_key_json(a) == public_key_json(b)
    assert signing.algorithm_of(a) == ECDSA_P256
    with pytest.raises(ValueError):
        private_key_from_seed(ECDSA_P256, bytes(32))
    with pytest.raises(ValueError):
        private_key_from_seed("rsa", bytes(40))


def test_sign_verify_round_trip_both_algorithms() -> None:
    for key in (
        private_key_from_seed(ED25519, bytes(range(32))),
        private_key_from_seed(ECDSA_P256, bytes(range(40))),
    ):
        entry = public_key_json(key)
        pub = parse_public_key(entry["algorithm"], entry["public"])
        sig = sign(key, b"payload")
        assert verify_signature(pub, b"payload", sig) is True
        flipped = bytes([sig[0] ^ 1]) + sig[1:]
        assert verify_signature(pub, b"payload", flipped) is False

