"""OpenSSH host keys: line parsing, the 44-character fingerprint, private key files."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nixfleet.core.errors import BadInput, ParseError
from nixfleet.core.hostkey import (
    HostPublicKey,
    fingerprint,
    host_public_key_from,
    load_host_private_key,
    normalize_fingerprint,
    parse_public_line,
    public_key_of,
)
from nixfleet.core.signing import private_key_pem

SEED = bytes(range(32))
KEY = Ed25519PrivateKey.from_private_bytes(SEED)
RAW = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
# What `ssh-keygen -y` prints, via cryptography's independent OpenSSH encoder.
LINE = KEY.public_key().public_bytes(
    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
).decode()
OPENSSH_PRIVATE = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
)
FP = base64.b64encode(hashlib.sha256(RAW).digest()).decode()
ED_HEADER = b"\x00\x00\x00\x0bssh-ed25519"


def test_parse_line_extracts_raw_key_and_comment() -> None:
    parsed = parse_public_line(f"{LINE} root@newhost\n")
    assert parsed == HostPublicKey(raw=RAW, comment="root@newhost")
    assert parse_public_line(LINE).comment == ""
    spaced = parse_public_line(f"  {LINE}   a comment with spaces ")
    assert spaced.comment == "a comment with spaces"


def test_fingerprint_is_padded_base64_sha256_of_raw_key() -> None:
    fp = parse_public_line(LINE).fingerprint
    assert fp == FP == fingerprint(RAW)
    assert len(fp) == 44 and fp.endswith("=")
    assert not fp.startswith("SHA256:")


def test_line_round_trips_and_matches_openssh_encoding() -> None:
    assert public_key_of(KEY).line() == LINE
    assert public_key_of(KEY, comment="c").line() == f"{LINE} c"
    assert parse_public_line(f"{LINE} c").line() == f"{LINE} c"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("", "not an OpenSSH public key line"),
        ("ssh-ed25519", "not an OpenSSH public key line"),
        ("ssh-rsa AAAAB3NzaC1yc2E", "key type 'ssh-rsa' is not ssh-ed25519"),
        ("ssh-ed25519 !!!", "key blob is not base64"),
        ("ssh-ed25519 AAAA", "key blob is truncated"),
        (
            "ssh-ed25519 "
            + base64.b64encode(b"\x00\x00\x00\x07ssh-rsa\x00\x00\x00\x20" + RAW).decode(),
            "key blob says b'ssh-rsa'",
        ),
        (
            "ssh-ed25519 "
            + base64.b64encode(ED_HEADER + b"\x00\x00\x00\x1f" + RAW[:31]).decode(),
            "ed25519 key is 31 bytes",
        ),
        (
            "ssh-ed25519 "
            + base64.b64encode(ED_HEADER + b"\x00\x00\x00\x20" + RAW + b"x").decode(),
            "1 trailing bytes",
        ),
    ],
)
def test_bad_lines_are_one_line_parse_errors(line: str, problem: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_public_line(line, source="hosts.h1.pubkey")
    assert str(err.value).startswith("hosts.h1.pubkey: ")
    assert problem in str(err.value)


def test_load_openssh_and_pkcs8_private_keys() -> None:
    for data in (OPENSSH_PRIVATE, private_key_pem(KEY), SEED, SEED.hex().encode()):
        assert public_key_of(load_host_private_key(data)).raw == RAW


def test_p256_is_not_a_host_key() -> None:
    pem = private_key_pem(ec.derive_private_key(5, ec.SECP256R1()))
    with pytest.raises(ParseError, match="host keys are ed25519, this is ecdsa-p256"):
        load_host_private_key(pem, source="/etc/ssh/key")


def test_host_public_key_from_public_or_private_file() -> None:
    assert host_public_key_from(f"{LINE} root@h\n".encode()).fingerprint == FP
    assert host_public_key_from(b"# comment\n\n" + LINE.encode()).fingerprint == FP
    assert host_public_key_from(OPENSSH_PRIVATE).fingerprint == FP
    assert host_public_key_from(private_key_pem(KEY)).fingerprint == FP
    with pytest.raises(ParseError):
        host_public_key_from(b"hello")


def test_normalize_fingerprint_accepts_openssh_form() -> None:
    assert normalize_fingerprint(FP) == FP
    assert normalize_fingerprint("SHA256:" + FP.rstrip("=")) == FP
    with pytest.raises(BadInput, match="decodes to 3 bytes"):
        normalize_fingerprint("AAAA")
    with pytest.raises(BadInput, match="not base64"):
        normalize_fingerprint("SHA256:***")
