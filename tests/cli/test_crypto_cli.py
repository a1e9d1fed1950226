"""The crypto subcommands end to end: keygen, release sign, verify-artifact, mint-token,
derive-pubkey, fingerprint, canonicalize. Exit codes: 0 ok, 1 rejected, 2 input."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nixfleet.cli.main import main
from nixfleet.core.canonical import canonicalize, sha256_hex
from nixfleet.core.errors import VerifyError
from nixfleet.core.timeutil import parse_instant
from nixfleet.core.token import parse_token, verify_token
from nixfleet.core.trust import parse_trust

NIXFLEET = Path(sys.executable).with_name("nixfleet")
NOW = "2025-06-01T12:00:00Z"
SIGNED_AT = "2025-06-01T11:30:00Z"


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        try:
            rc = main(list(args))
        except SystemExit as exc:  # argparse usage errors
            rc = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        return rc, out, err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


def artifact_bytes(signed_at: str = SIGNED_AT) -> bytes:
    value = {
        "schemaVersion": 1,
        "hosts": {"web1": {"channel": "stable", "tags": ["web"]}},
        "meta": {"schemaVersion": 1, "signedAt": signed_at, "ciCommit": "0123abcd"},
    }
    return json.dumps(value, indent=2).encode()  # not canonical on purpose


def write_trust(path: Path, ci_pub: Path, org_pub: Path | None = None, **slot: Any) -> Path:
    ci = {"current": json.loads(ci_pub.read_text()), **slot}
    org = None if org_pub is None else {"current": json.loads(org_pub.read_text())}
    doc = {"schemaVersion": 1, "ciReleaseKey": ci, "cacheKeys": [], "orgRootKey": org}
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(params=["ed25519", "ecdsa-p256"])
def signed(request: pytest.FixtureRequest, tmp_path: Path, cli: Cli) -> dict[str, Path]:
    """A key pair, a trust.json holding it, and a signed artifact."""
    key = tmp_path / "ci.key"
    rc, _, _ = cli("keygen", "--algorithm", request.param, "--out", str(key))
    assert rc == 0
    art = tmp_path / "fleet.resolved.json"
    art.write_bytes(artifact_bytes())
    rc, out, _ = cli("release", "sign", str(art), "--key", str(key))
    assert rc == 0
    assert out == f"signed {art} ({request.param}) -> {art}.sig\n"
    trust = write_trust(tmp_path / "trust.json", Path(f"{key}.pub"))
    return {"key": key, "artifact": art, "sig": Path(f"{art}.sig"), "trust": trust}


def verify(cli: Cli, f: dict[str, Path], *extra: str) -> tuple[int, str, str]:
    return cli("verify-artifact", str(f["artifact"]), "--trust-file", str(f["trust"]),
               "--now", NOW, *extra)


# --- keygen --------------------------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "pub_len"), [("ed25519", 32), ("ecdsa-p256", 64)])
def test_keygen_writes_private_0600_and_trust_key_object(
    cli: Cli, tmp_path: Path, algorithm: str, pub_len: int
) -> None:
    out = tmp_path / "k"
    rc, stdout, err = cli("keygen", "--algorithm", algorithm, "--out", str(out))
    assert rc == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    entry = json.loads(Path(f"{out}.pub").read_text())
    assert entry["algorithm"] == algorithm
    assert len(base64.b64decode(entry["public"])) == pub_len
    assert json.loads(stdout) == entry
    assert err == f"wrote {out} ({algorithm} private key, 0600) and {out}.pub\n"
    # derive-pubkey agrees with the .pub file.
    rc, stdout, _ = cli("derive-pubkey", str(out))
    assert (rc, stdout) == (0, entry["public"] + "\n")


def test_keygen_refuses_to_overwrite_without_force(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "k"
    assert cli("keygen", "--algorithm", "ed25519", "--out", str(out))[0] == 0
    before = out.read_bytes()
    rc, _, err = cli("keygen", "--algorithm", "ed25519", "--out", str(out))
    assert rc == 2
    assert err == f"nixfleet: keygen: {out} exists (use --force to overwrite)\n"
    assert out.read_bytes() == before
    out.chmod(0o644)
    assert cli("keygen", "--algorithm", "ed25519", "--out", str(out), "--force")[0] == 0
    assert out.read_bytes() != before
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_keygen_refuses_when_only_pub_exists(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "k"
    Path(f"{out}.pub").write_text("keep me")
    rc, _, err = cli("keygen", "--algorithm", "ed25519", "--out", str(out))
    assert rc == 2 and "k.pub exists" in err
    assert not out.exists()


# --- release sign → verify-artifact ------------------------------------------------------------


def test_round_trip_verifies(cli: Cli, signed: dict[str, Path]) -> None:
    assert len(signed["sig"].read_bytes()) == 64
    rc, out, err = verify(cli, signed)
    algorithm = json.loads(Path(f"{signed['key']}.pub").read_text())["algorithm"]
    assert (rc, err) == (0, "")
    assert out == (
        f"verify-artifact: ok {signed['artifact']} kind=artifact signed_at={SIGNED_AT} "
        f"age_secs=1800 key=current algorithm={algorithm}\n"
    )


def test_signature_covers_jcs_of_the_artifact(cli: Cli, signed: dict[str, Path]) -> None:
    # Re-formatting the JSON keeps the JCS bytes and therefore the signature valid.
    art = signed["artifact"]
    art.write_bytes(canonicalize(art.read_bytes()))
    assert verify(cli, signed)[0] == 0


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_artifact_byte_is_bad_signature(cli: Cli, signed: dict[str, Path]) -> None:
    art = signed["artifact"]
    _flip(art, art.read_bytes().index(b"stable"))  # "stable" -> "rtable": still JSON
    rc, out, err = verify(cli, signed)
    assert (rc, out) == (1, "")
    assert err.startswith("nixfleet: verify-artifact: bad-signature: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize("offset", [0, 31, 32, 63])
def test_flipped_signature_byte_is_bad_signature(
    cli: Cli, signed: dict[str, Path], offset: int
) -> None:
    _flip(signed["sig"], offset)
    rc, _, err = verify(cli, signed)
    assert rc == 1
    assert err.startswith("nixfleet: verify-artifact: bad-signature: ")


def test_signature_by_another_key_is_bad_signature(
    cli: Cli, signed: dict[str, Path], tmp_path: Path
) -> None:
    other = tmp_path / "other.key"
    assert cli("keygen", "--algorithm", "ed25519", "--out", str(other))[0] == 0
    assert cli("release", "sign", str(signed["artifact"]), "--key", str(other))[0] == 0
    rc, _, err = verify(cli, signed)
    assert rc == 1 and "bad-signature" in err


@pytest.mark.parametrize(
    ("signed_at", "now", "window", "reason"),
    [
        ("2025-06-01T12:01:01Z", NOW, None, "future-dated"),
        ("2025-06-01T12:01:00Z", NOW, None, "ok"),
        ("2025-05-02T11:58:59Z", NOW, None, "stale"),  # 30 d + 61 s before
        ("2025-05-02T11:59:00Z", NOW, None, "ok"),  # 30 d + 60 s before
        ("2025-06-01T11:00:00Z", NOW, "3539", "stale"),
        ("2025-06-01T11:00:00Z", NOW, "3540", "ok"),
    ],
)
def test_freshness_reasons(
    cli: Cli, signed: dict[str, Path], signed_at: str, now: str, window: str | None, reason: str
) -> None:
    signed["artifact"].write_bytes(artifact_bytes(signed_at))
    assert cli("release", "sign", str(signed["artifact"]), "--key", str(signed["key"]))[0] == 0
    extra = [] if window is None else ["--freshness-window-secs", window]
    rc, out, err = cli("verify-artifact", str(signed["artifact"]), "--trust-file",
                       str(signed["trust"]), "--now", now, *extra)
    if reason == "ok":
        assert rc == 0 and out.startswith("verify-artifact: ok "), err
    else:
        assert (rc, out) == (1, "")
        assert err.startswith(f"nixfleet: verify-artifact: {reason}: signedAt {signed_at} ")
        assert err.count("\n") == 1


def test_unsigned_and_reject_before(cli: Cli, signed: dict[str, Path], tmp_path: Path) -> None:
    trust = write_trust(tmp_path / "t2.json", Path(f"{signed['key']}.pub"),
                        rejectBefore="2025-06-01T11:45:00Z")
    rc, _, err = cli("verify-artifact", str(signed["artifact"]), "--trust-file", str(trust),
                     "--now", NOW)
    assert rc == 1 and err.startswith("nixfleet: verify-artifact: reject-before: ")
    art = signed["artifact"]
    art.write_text(json.dumps({"schemaVersion": 1, "meta": {"signedAt": None}}))
    assert cli("release", "sign", str(art), "--key", str(signed["key"]))[0] == 0
    rc, _, err = verify(cli, signed)
    assert rc == 1 and err.startswith("nixfleet: verify-artifact: unsigned")


def test_no_trust_roots(cli: Cli, signed: dict[str, Path]) -> None:
    signed["trust"].write_text(
        json.dumps({"schemaVersion": 1, "ciReleaseKey": {}, "cacheKeys": [], "orgRootKey": None})
    )
    rc, _, err = verify(cli, signed)
    assert rc == 1 and err.startswith("nixfleet: verify-artifact: no-trust-roots")


@pytest.mark.parametrize("which", ["artifact", "sig", "trust"])
def test_missing_file_is_exit_2_one_line(cli: Cli, signed: dict[str, Path], which: str) -> None:
    path = signed[which]
    path.unlink()
    rc, out, err = verify(cli, signed)
    what = {"artifact": "artifact", "sig": "signature", "trust": "trust file"}[which]
    assert (rc, out) == (2, "")
    assert err == (
        f"nixfleet: verify-artifact: cannot read {what} {path} (No such file or directory)\n"
    )


def test_explicit_signature_path(cli: Cli, signed: dict[str, Path], tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere.sig"
    signed["sig"].rename(moved)
    assert verify(cli, signed)[0] == 2
    assert verify(cli, signed, "--signature", str(moved))[0] == 0


def test_release_sign_out_flag(cli: Cli, signed: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "x.sig"
    rc, _, _ = cli("release", "sign", str(signed["artifact"]), "--key", str(signed["key"]),
                   "--out", str(out))
    assert rc == 0 and len(out.read_bytes()) == 64


def test_bad_trust_file_and_bad_now_are_input_errors(cli: Cli, signed: dict[str, Path]) -> None:
    signed["trust"].write_text('{"schemaVersion": 1, "cacheKeys": []}')
    rc, _, err = verify(cli, signed)
    assert rc == 2 and err == f"nixfleet: {signed['trust']}: ciReleaseKey: missing\n"
    rc, _, err = cli("verify-artifact", str(signed["artifact"]), "--trust-file",
                     str(signed["trust"]), "--now", "noon")
    assert rc == 2 and err.startswith("nixfleet: --now: not an RFC 3339 timestamp")


def test_release_sign_refuses_bad_json_and_bad_key(cli: Cli, tmp_path: Path,
                                                    signed: dict[str, Path]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    rc, _, err = cli("release", "sign", str(bad), "--key", str(signed["key"]))
    assert rc == 2 and err.startswith(f"nixfleet: release sign: {bad}: not JSON")
    junk = tmp_path / "junk.key"
    junk.write_text("hello")
    rc, _, err = cli("release", "sign", str(signed["artifact"]), "--key", str(junk))
    assert rc == 2 and err.startswith(f"nixfleet: release sign: signing key {junk}: not a private")


# --- rollout manifests ----------------------------------------------------------------------


def test_rollout_manifest_kind(cli: Cli, signed: dict[str, Path]) -> None:
    art = signed["artifact"]
    rid = sha256_hex(canonicalize(art.read_bytes()))
    rc, out, _ = verify(cli, signed, "--kind", "rollout-manifest", "--rollout-id", rid)
    assert rc == 0 and out.rstrip().endswith(f"rollout_id={rid}")
    rc, _, err = verify(cli, signed, "--kind", "rollout-manifest", "--rollout-id", "ab" * 32)
    assert rc == 1 and err.startswith("nixfleet: verify-artifact: rollout-id-mismatch: ")
    # The fixed 3600 s window: 1 h + 61 s after signing is stale whatever the default says.
    rc, _, err = cli("verify-artifact", str(art), "--trust-file", str(signed["trust"]),
                     "--now", "2025-06-01T12:31:01Z", "--kind", "rollout-manifest",
                     "--rollout-id", rid)
    assert rc == 1 and err.startswith("nixfleet: verify-artifact: stale: ")
    assert verify(cli, signed, "--kind", "rollout-manifest")[0] == 2
    assert verify(cli, signed, "--rollout-id", rid)[0] == 2
    assert verify(cli, signed, "--kind", "rollout-manifest", "--rollout-id", rid,
                  "--freshness-window-secs", "10")[0] == 2


# --- mint-token ----------------------------------------------------------------------------------


ORG_SEED = bytes(range(100, 132))
HOST_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(200, 232)))
HOST_RAW = HOST_KEY.public_key().public_bytes(
    serialization.Encoding.Raw, serialization.PublicFormat.Raw
)
HOST_FP = base64.b64encode(hashlib.sha256(HOST_RAW).digest()).decode()
HOST_LINE = HOST_KEY.public_key().public_bytes(
    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
).decode() + " root@newhost"


def org_key_files(tmp_path: Path) -> dict[str, Path]:
    key = Ed25519PrivateKey.from_private_bytes(ORG_SEED)
    files = {
        "raw": ORG_SEED,
        "hex": ORG_SEED.hex().encode() + b"\n",
        "pkcs8": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }
    out = {}
    for name, data in files.items():
        path = tmp_path / f"org-root-key.{name}"
        path.write_bytes(data)
        out[name] = path
    return out


def org_trust(cli: Cli, tmp_path: Path, key_file: Path) -> Path:
    rc, pub, _ = cli("derive-pubkey", str(key_file))
    assert rc == 0
    doc = {
        "schemaVersion": 1,
        "ciReleaseKey": {},
        "cacheKeys": [],
        "orgRootKey": {"current": {"algorithm": "ed25519", "public": pub.strip()}},
    }
    path = tmp_path / "trust.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("form", ["raw", "hex", "pkcs8"])
def test_mint_token_verifies_against_matching_trust(cli: Cli, tmp_path: Path, form: str) -> None:
    key_file = org_key_files(tmp_path)[form]
    rc, out, err = cli("mint-token", "--hostname", "newhost", "--csr-pubkey-fingerprint",
                       HOST_FP, "--org-root-key", str(key_file))
    assert rc == 0, err
    token = parse_token(json.loads(out))
    trust = parse_trust(json.loads(org_trust(cli, tmp_path, key_file).read_text()))
    issued = parse_instant(token.claims.issued_at)
    verified = verify_token(token, trust, issued)
    assert verified.claims.hostname == "newhost"
    assert verified.claims.expected_pubkey_fingerprint == HOST_FP
    assert verified.key.role == "current"
    assert parse_instant(token.claims.expires_at) - issued == (
        parse_instant("2025-01-02T00:00:00Z") - parse_instant("2025-01-01T00:00:00Z")
    )
    # stderr: nonce, expiry and the allowlist entry, all naming this token.
    lines = err.splitlines()
    assert lines[0] == f"nonce: {token.claims.nonce}"
    assert len(token.claims.nonce) == 32 and int(token.claims.nonce, 16) >= 0
    assert lines[1] == f"expiresAt: {token.claims.expires_at}"
    assert "bootstrapNonces" in lines[2]
    assert json.loads(lines[3]) == {
        "nonce": token.claims.nonce,
        "hostname": "newhost",
        "expiresAt": token.claims.expires_at,
    }
    # A claim edited after minting no longer verifies.
    edited = json.loads(out)
    edited["claims"]["hostname"] = "otherhost"
    with pytest.raises(VerifyError) as exc:
        verify_token(parse_token(edited), trust, issued)
    assert exc.value.reason == "bad-signature"


def test_mint_token_nonces_differ(cli: Cli, tmp_path: Path) -> None:
    key = org_key_files(tmp_path)["raw"]
    args = ("mint-token", "--hostname", "h", "--csr-pubkey-fingerprint", HOST_FP,
            "--org-root-key", str(key))
    a, b = json.loads(cli(*args)[1]), json.loads(cli(*args)[1])
    assert a["claims"]["nonce"] != b["claims"]["nonce"]


def test_mint_token_expiry_window_and_rotation(cli: Cli, tmp_path: Path) -> None:
    keys = org_key_files(tmp_path)
    rc, out, _ = cli("mint-token", "--hostname", "newhost", "--csr-pubkey-fingerprint", HOST_FP,
                     "--org-root-key", str(keys["raw"]), "--validity-hours", "2",
                     "--now", "2025-06-01T12:00:00.5Z")
    assert rc == 0
    token = parse_token(json.loads(out))
    assert token.claims.issued_at == "2025-06-01T12:00:00Z"
    assert token.claims.expires_at == "2025-06-01T14:00:00Z"
    new_root = Ed25519PrivateKey.from_private_bytes(bytes(32))
    new_pub = base64.b64encode(new_root.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    rc, old_pub, _ = cli("derive-pubkey", str(keys["raw"]))
    rotated = parse_trust({
        "schemaVersion": 1, "ciReleaseKey": {}, "cacheKeys": [],
        "orgRootKey": {"current": {"algorithm": "ed25519", "public": new_pub},
                       "previous": {"algorithm": "ed25519", "public": old_pub.strip()}},
    })
    assert verify_token(token, rotated, parse_instant(NOW)).key.role == "previous"
    with pytest.raises(VerifyError) as exc:
        verify_token(token, rotated, parse_instant("2025-06-01T14:00:00Z"))
    assert exc.value.reason == "expired"
    retired = parse_trust({
        "schemaVersion": 1, "ciReleaseKey": {}, "cacheKeys": [],
        "orgRootKey": {"current": {"algorithm": "ed25519", "public": new_pub}, "previous": None},
    })
    with pytest.raises(VerifyError) as exc:
        verify_token(token, retired, parse_instant(NOW))
    assert exc.value.reason == "bad-signature"


def test_mint_token_from_fleet_resolved(cli: Cli, tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.resolved.json"
    fleet.write_text(json.dumps({"hosts": {"newhost": {"pubkey": HOST_LINE}, "bare": {}}}))
    key = org_key_files(tmp_path)["raw"]
    rc, out, _ = cli("mint-token", "--hostname", "newhost", "--fleet-resolved", str(fleet),
                     "--org-root-key", str(key))
    assert rc == 0
    assert json.loads(out)["claims"]["expectedPubkeyFingerprint"] == HOST_FP
    rc, _, err = cli("mint-token", "--hostname", "bare", "--fleet-resolved", str(fleet),
                     "--org-root-key", str(key))
    assert rc == 2 and err.endswith("hosts.bare.pubkey: no host key declared\n")
    rc, _, err = cli("mint-token", "--hostname", "ghost", "--fleet-resolved", str(fleet),
                     "--org-root-key", str(key))
    assert rc == 2 and err == f"nixfleet: {fleet}: hosts.ghost: missing\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--csr-pubkey-fingerprint", "SHA256:abc"], "nixfleet: mint-token: --csr-pubkey-"),
        (["--csr-pubkey-fingerprint", HOST_FP, "--validity-hours", "0"], "must be positive"),
        (["--csr-pubkey-fingerprint", HOST_FP, "--version", "2"], "invalid choice"),
        ([], "one of the arguments --csr-pubkey-fingerprint --fleet-resolved is required"),
    ],
)
def test_mint_token_input_errors(cli: Cli, tmp_path: Path, args: list[str], message: str) -> None:
    key = org_key_files(tmp_path)["raw"]
    rc, out, err = cli("mint-token", "--hostname", "h", "--org-root-key", str(key), *args)
    assert (rc, out) == (2, "")
    assert message in err and err.count("\n") == 1


def test_mint_token_refuses_p256_and_missing_org_key(cli: Cli, tmp_path: Path) -> None:
    p256 = tmp_path / "p256"
    assert cli("keygen", "--algorithm", "ecdsa-p256", "--out", str(p256))[0] == 0
    base = ("mint-token", "--hostname", "h", "--csr-pubkey-fingerprint", HOST_FP)
    rc, _, err = cli(*base, "--org-root-key", str(p256))
    assert rc == 2 and "orgRootKey must be ed25519" in err
    rc, _, err = cli(*base, "--org-root-key", str(tmp_path / "nope"))
    assert rc == 2
    assert err == (
        f"nixfleet: mint-token: cannot read org root key {tmp_path / 'nope'} "
        "(No such file or directory)\n"
    )


# --- derive-pubkey and fingerprint ------------------------------------------------------------


def test_derive_pubkey_accepts_every_key_form(cli: Cli, tmp_path: Path) -> None:
    expected = base64.b64encode(
        Ed25519PrivateKey.from_private_bytes(ORG_SEED).public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
    files = list(org_key_files(tmp_path).values())
    openssh = tmp_path / "ssh_key"
    openssh.write_bytes(Ed25519PrivateKey.from_private_bytes(ORG_SEED).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    for path in [*files, openssh]:
        assert cli("derive-pubkey", str(path)) == (0, expected + "\n", "")
    rc, out, _ = cli("derive-pubkey", "--json", str(files[0]))
    assert rc == 0
    assert json.loads(out) == {"algorithm": "ed25519", "public": expected}


def test_fingerprint_of_public_line_and_private_key(cli: Cli, tmp_path: Path) -> None:
    pub = tmp_path / "ssh_host_ed25519_key.pub"
    pub.write_text(HOST_LINE + "\n")
    priv = tmp_path / "ssh_host_ed25519_key"
    priv.write_bytes(HOST_KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    assert cli("fingerprint", str(pub)) == (0, HOST_FP + "\n", "")
    assert cli("fingerprint", str(priv)) == (0, HOST_FP + "\n", "")
    assert cli("fingerprint", "--pubkey", HOST_LINE) == (0, HOST_FP + "\n", "")
    assert cli("fingerprint")[0] == 2
    rc, _, err = cli("fingerprint", "--pubkey", "ssh-rsa AAAA")
    assert rc == 2
    assert err == "nixfleet: fingerprint: --pubkey: key type 'ssh-rsa' is not ssh-ed25519\n"


# --- canonicalize ------------------------------------------------------------------------------


def feed_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_canonicalize_golden(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    feed_stdin(monkeypatch, b'{"b":2,"a":{"z":null,"y":true,"x":[3,1,2]},"schemaVersion":1}\n')
    assert cli("canonicalize") == (
        0, '{"a":{"x":[3,1,2],"y":true,"z":null},"b":2,"schemaVersion":1}', ""
    )


def test_canonicalize_bad_json_exit_1(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    feed_stdin(monkeypatch, b'{"a": }')
    rc, out, err = cli("canonicalize")
    assert (rc, out) == (1, "")
    assert err.startswith("nixfleet: canonicalize: stdin: not JSON") and err.count("\n") == 1


def test_canonicalize_io_error_exit_2(cli: Cli, tmp_path: Path) -> None:
    rc, _, err = cli("canonicalize", str(tmp_path / "missing.json"))
    assert rc == 2 and err.startswith("nixfleet: canonicalize: cannot read input ")


# --- the real console script ---------------------------------------------------------------------


def run_script(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(NIXFLEET), *args], input=stdin, capture_output=True, timeout=60,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, check=False,
    )


def test_script_exit_codes_and_one_line_errors(tmp_path: Path) -> None:
    key = tmp_path / "ci.key"
    assert run_script("keygen", "--algorithm", "ecdsa-p256", "--out", str(key)).returncode == 0
    art = tmp_path / "a.json"
    art.write_bytes(artifact_bytes())
    assert run_script("release", "sign", str(art), "--key", str(key)).returncode == 0
    trust = write_trust(tmp_path / "trust.json", Path(f"{key}.pub"))
    base = ("verify-artifact", str(art), "--trust-file", str(trust), "--now", NOW)

    ok = run_script(*base)
    assert ok.returncode == 0 and ok.stderr == b""
    assert ok.stdout.startswith(b"verify-artifact: ok ")

    _flip(Path(f"{art}.sig"), 40)
    bad = run_script(*base)
    assert bad.returncode == 1 and bad.stdout == b""
    assert bad.stderr.startswith(b"nixfleet: verify-artifact: bad-signature: ")
    assert bad.stderr.count(b"\n") == 1 and b"Traceback" not in bad.stderr

    missing = run_script("verify-artifact", str(tmp_path / "nope.json"), "--trust-file",
                         str(trust))
    assert missing.returncode == 2
    assert missing.stderr == (
        f"nixfleet: verify-artifact: cannot read artifact {tmp_path / 'nope.json'} "
        "(No such file or directory)\n"
    ).encode()

    canon = run_script("canonicalize", stdin=b'{"\\/":"\\u20ac","1":1e30}')
    assert (canon.returncode, canon.stdout) == (0, '{"/":"€","1":1e+30}'.encode())
    junk = run_script("canonicalize", stdin=b"\xff")
    assert junk.returncode == 1 and junk.stderr.count(b"\n") == 1
    assert b"Traceback" not in junk.stderr


def test_script_mint_token_pipeline(tmp_path: Path) -> None:
    org = tmp_path / "org-root-key"
    org.write_bytes(ORG_SEED.hex().encode())
    minted = run_script("mint-token", "--hostname", "newhost", "--csr-pubkey-fingerprint",
                        HOST_FP, "--org-root-key", str(org))
    assert minted.returncode == 0, minted.stderr
    token = parse_token(json.loads(minted.stdout))
    assert minted.stderr.decode().splitlines()[0] == f"nonce: {token.claims.nonce}"
    pub = run_script("derive-pubkey", str(org)).stdout.decode().strip()
    trust = parse_trust({
        "schemaVersion": 1, "ciReleaseKey": {}, "cacheKeys": [],
        "orgRootKey": {"current": {"algorithm": "ed25519", "public": pub}},
    })
    assert verify_token(token, trust, parse_instant(token.claims.issued_at)).key.role == "current"
