"""`nixfleet keygen --tpm` and `nixfleet release sign --tpm` against a real swtpm; the
signature is checked by `nixfleet verify-artifact` (the production verifier). Without
swtpm these tests FAIL with the line saying what to install."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_sim.fleetgen import is_high_s
from hw.tpm import Swtpm
from hw.tpm.swtpm import missing
from nixfleet.cli.main import main

SIGNED_AT = "2026-06-01T11:30:00Z"
NOW = "2026-06-01T12:00:00Z"


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main(list(args))
    except SystemExit as exc:  # argparse usage errors
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[Swtpm]:
    why = missing()
    if why is not None:
        pytest.fail(why)
    with Swtpm.start(tmp_path / "swtpm") as tpm:
        yield tpm


def artifact(path: Path, n: int = 0) -> Path:
    doc = {
        "schemaVersion": 1,
        "hosts": {f"web{n}": {"channel": "stable"}},
        "meta": {"schemaVersion": 1, "signedAt": SIGNED_AT, "ciCommit": "0123abcd"},
    }
    path.write_text(json.dumps(doc, indent=2))
    return path


def trust_file(path: Path, key_object: str) -> Path:
    doc = {
        "schemaVersion": 1,
        "ciReleaseKey": {"current": json.loads(key_object)},
        "cacheKeys": [],
        "orgRootKey": None,
    }
    path.write_text(json.dumps(doc))
    return path


def test_keygen_then_sign_then_verify(
    capsys: pytest.CaptureFixture[str], swtpm: Swtpm, tmp_path: Path
) -> None:
    out = tmp_path / "release"
    rc, made, err = cli(capsys, "keygen", "--tpm", swtpm.tcti, "--out", str(out))
    assert rc == 0, err
    assert err.startswith("created ecdsa-p256 key at TPM handle 0x81010002 (IBM SW TPM firmware")
    assert Path(f"{out}.pub").read_text() == made and not out.exists()  # the key stays inside
    # Idempotent: the key is loaded, not made again; the pub file needs --force.
    rc, again, err = cli(capsys, "keygen", "--tpm", swtpm.tcti)
    assert (rc, again) == (0, made) and err.startswith("loaded ecdsa-p256 key")
    rc, _, err = cli(capsys, "keygen", "--tpm", swtpm.tcti, "--out", str(out))
    assert (rc, err) == (2, f"nixfleet: keygen: {out}.pub exists (use --force to overwrite)\n")

    trust = trust_file(tmp_path / "trust.json", made)
    highs = 0
    for n in range(8):
        art = artifact(tmp_path / f"fleet{n}.json", n)
        rc, said, err = cli(capsys, "release", "sign", str(art), "--tpm", swtpm.tcti)
        assert (rc, err) == (0, "")
        assert said == f"signed {art} (ecdsa-p256, TPM 0x81010002) -> {art}.sig\n"
        sig = Path(f"{art}.sig").read_bytes()
        highs += is_high_s(sig)
        rc, said, err = cli(
            capsys, "verify-artifact", str(art), "--trust-file", str(trust), "--now", NOW
        )
        assert (rc, err) == (0, ""), said
        assert "algorithm=ecdsa-p256" in said
    print(f"high-s: {highs} of 8")


def test_another_handle_is_another_key(
    capsys: pytest.CaptureFixture[str], swtpm: Swtpm, tmp_path: Path
) -> None:
    _, first, _ = cli(capsys, "keygen", "--tpm", swtpm.tcti)
    rc, second, err = cli(capsys, "keygen", "--tpm", swtpm.tcti, "--tpm-handle", "0x81010003")
    assert rc == 0, err
    # A primary key is derived from the owner seed and its template: the same key at
    # both handles, which is what "load or create" promises (no key blob to lose).
    assert json.loads(second)["algorithm"] == "ecdsa-p256"
    assert second == first


@pytest.mark.parametrize(
    ("args", "rc", "err"),
    [
        (("release", "sign", "{art}", "--tpm", "device:{tmp}/tpmrm0"), 1,
         "nixfleet: release sign: no TPM device {tmp}/tpmrm0 (is the TPM enabled and tpm_tis "
         "loaded?)\n"),
        (("keygen", "--tpm", "device:{tmp}/tpmrm0"), 1,
         "nixfleet: keygen: no TPM device {tmp}/tpmrm0 (is the TPM enabled and tpm_tis "
         "loaded?)\n"),
        (("release", "sign", "{art}", "--tpm", "swtpm:host=127.0.0.1,port={dead}"), 1,
         "nixfleet: release sign: cannot reach a TPM at swtpm:host=127.0.0.1,port={dead} "
         "(tcti:IO failure)\n"),
        (("release", "sign", "{art}", "--tpm", "{live}"), 1,
         "nixfleet: release sign: TPM at {live}: no key at handle 0x81010002 (create it: "
         "nixfleet keygen --tpm)\n"),
        (("release", "sign", "{art}", "--tpm", "{live}", "--tpm-handle", "7"), 1,
         "nixfleet: release sign: --tpm-handle 7: not a persistent handle "
         "(0x81000000-0x81ffffff)\n"),
        (("keygen", "--tpm", "{live}", "--algorithm", "ed25519"), 2,
         "nixfleet: keygen: --tpm keys are ecdsa-p256, not ed25519\n"),
        (("keygen", "--out", "{tmp}/k"), 2,
         "nixfleet: keygen: --algorithm required (or --tpm TCTI)\n"),
        (("release", "sign", "{art}", "--tpm", "{live}", "--key", "{tmp}/k"), 2,
         "nixfleet release sign: argument --key: not allowed with argument --tpm\n"),
    ],
)  # fmt: skip
def test_one_line_errors(
    capsys: pytest.CaptureFixture[str],
    swtpm: Swtpm,
    tmp_path: Path,
    args: tuple[str, ...],
    rc: int,
    err: str,
) -> None:
    dead = Swtpm.start(tmp_path / "dead")
    dead.stop()  # its port is free again: nothing listens there
    fill = {
        "art": str(artifact(tmp_path / "fleet.json")),
        "tmp": str(tmp_path),
        "live": swtpm.tcti,
        "dead": str(dead.port),
    }
    got = cli(capsys, *(a.format(**fill) for a in args))
    assert (got[0], got[2]) == (rc, err.format(**fill))
    assert not (tmp_path / "fleet.json.sig").exists()
