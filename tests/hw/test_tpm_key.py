"""hw.tpm against a real software TPM (swtpm): the persistent P-256 key, raw `r‖s`
signatures the production verifier takes, the TPM's identity, one-line errors.

The acceptance check of the TPM half of the hardware-lab issue: 200 artifacts signed
through swtpm all verify with `nixfleet.core.verify.verify_artifact` (the CP's and
the agents' verifier) and about half of them are high-s. Without swtpm these tests
FAIL with the line saying what to install (no skip hides a missing tool).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleet_sim.fleetgen import (
    HostDecl,
    ReleaseKit,
    ci_commit,
    fleet_doc,
    is_high_s,
    p256_twin,
    seeded_key,
)
from hw.tpm import DEFAULT_HANDLE, Swtpm, TpmError, TpmKey, parse_handle
from hw.tpm.swtpm import missing
from nixfleet.core.canonical import canonical_bytes
from nixfleet.core.errors import VerifyError
from nixfleet.core.signing import public_key_json, public_key_of, sign, verify_signature
from nixfleet.core.trust import parse_trust
from nixfleet.core.verify import verify_artifact

ARTIFACTS = 200
HIGH_SHARE = (0.30, 0.70)
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[Swtpm]:
    why = missing()
    if why is not None:
        pytest.fail(why)
    with Swtpm.start(tmp_path / "swtpm") as tpm:
        yield tpm


@pytest.fixture
def tpm_key(swtpm: Swtpm) -> Iterator[TpmKey]:
    with TpmKey.open(swtpm.tcti) as key:
        yield key


def test_200_tpm_signed_artifacts_verify_with_the_production_verifier(
    tpm_key: TpmKey, record_property: pytest.RecordProperty
) -> None:
    kit = ReleaseKit(algorithm="ecdsa-p256", signer=tpm_key)
    slot = parse_trust(kit.trust()).ci_release_key
    high = 0
    for i in range(ARTIFACTS):
        doc = fleet_doc(
            {f"h{i}": HostDecl()}, signed_at=NOW - timedelta(minutes=1), ci_commit=ci_commit(i)
        )
        raw = canonical_bytes(doc)
        sig = tpm_key.sign(raw)  # as the TPM made it: no normalising anywhere
        high += is_high_s(sig)
        verified = verify_artifact(raw, sig, slot, now=NOW, window_secs=3600)
        assert verified.canonical == raw
        # The twin (r, n−s) is just as valid; other bytes are not.
        assert verify_signature(tpm_key.public_key(), raw, p256_twin(sig))
        with pytest.raises(VerifyError, match="bad-signature"):
            verify_artifact(raw.replace(b"h", b"x", 1), sig, slot, now=NOW, window_secs=3600)
    share = high / ARTIFACTS
    record_property("high_s_share", share)
    print(f"{ARTIFACTS} TPM signatures, high-s share {share:.2f} ({tpm_key.identity().line()})")
    assert HIGH_SHARE[0] <= share <= HIGH_SHARE[1], share


def test_key_is_persistent_and_loaded_again_after_a_restart(tmp_path: Path) -> None:
    why = missing()
    if why is not None:
        pytest.fail(why)
    state = tmp_path / "state"
    with Swtpm.start(state) as first, TpmKey.open(first.tcti) as made:
        assert made.created and made.handle == DEFAULT_HANDLE
        public = made.public_key_json()
    with Swtpm.start(state) as again:
        with TpmKey.open(again.tcti, create=False) as loaded:
            assert not loaded.created
            assert loaded.public_key_json() == public
        # Another handle is another key; an empty one is refused when asked not to create.
        with pytest.raises(TpmError, match="no key at handle 0x81010003"):
            TpmKey.open(again.tcti, 0x81010003, create=False)
    assert public["algorithm"] == "ecdsa-p256"
    # The form trust.json takes, through the production parser.
    doc = {"schemaVersion": 1, "ciReleaseKey": {"current": public}, "cacheKeys": []}
    assert parse_trust(json.loads(json.dumps(doc))).ci_release_key.current is not None


def test_identity_names_manufacturer_and_firmware(tpm_key: TpmKey) -> None:
    ident = tpm_key.identity()
    assert ident.manufacturer == "IBM"  # swtpm reports IBM's TPM 2.0 reference code
    assert "SW" in ident.vendor and "TPM" in ident.vendor
    assert len(ident.firmware) == 17 and ident.firmware[8] == "."


def test_release_kit_publishes_only_tpm_made_signatures(tpm_key: TpmKey) -> None:
    """The kit's high-s switch picks among the TPM's own draws; it never computes one."""
    kit = ReleaseKit(algorithm="ecdsa-p256", signer=tpm_key)
    pub = tpm_key.public_key()
    for high in (False, True, False, True):
        kit.high_s = high
        raw, sig = kit.sign({"schemaVersion": 1, "n": high})
        assert is_high_s(sig) == high and verify_signature(pub, raw, sig)


def test_unreachable_and_missing_tpms_are_one_line(swtpm: Swtpm, tmp_path: Path) -> None:
    port = swtpm.port
    swtpm.stop()
    with pytest.raises(TpmError) as gone:
        TpmKey.open(f"swtpm:host=127.0.0.1,port={port}")
    assert str(gone.value).startswith(f"cannot reach a TPM at swtpm:host=127.0.0.1,port={port}")
    with pytest.raises(TpmError) as nodev:
        TpmKey.open(f"device:{tmp_path}/tpmrm0")
    assert (
        str(nodev.value)
        == f"no TPM device {tmp_path}/tpmrm0 (is the TPM enabled and tpm_tis loaded?)"
    )
    for err in (gone.value, nodev.value):
        assert "\n" not in str(err)


def test_missing_swtpm_binary_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert missing() == "no swtpm binary on PATH: install swtpm (apt-get install swtpm swtpm-tools)"
    with pytest.raises(TpmError, match=r"^no swtpm binary on PATH"):
        Swtpm.start(tmp_path / "tpm")


@pytest.mark.parametrize(
    ("text", "why"),
    [("0x81010002", None), ("2164326402", None), ("0x80000001", "not a persistent"),
     ("h", "not a number")],
)  # fmt: skip
def test_parse_handle(text: str, why: str | None) -> None:
    if why is None:
        assert parse_handle(text) == DEFAULT_HANDLE
    else:
        with pytest.raises(TpmError, match=why):
            parse_handle(text)


def test_each_swtpm_has_its_own_ports_and_state(tmp_path: Path) -> None:
    why = missing()
    if why is not None:
        pytest.fail(why)
    with Swtpm.start(tmp_path / "a") as a, Swtpm.start(tmp_path / "b") as b:
        assert {a.port, a.ctrl_port}.isdisjoint({b.port, b.ctrl_port})
        with TpmKey.open(a.tcti) as ka, TpmKey.open(b.tcti) as kb:
            assert ka.public_key_json() != kb.public_key_json()  # two TPMs, two seeds
    assert a.proc.poll() is not None and b.proc.poll() is not None


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256"])
def test_default_signer_is_the_seeded_software_key_unchanged(algorithm: str) -> None:
    """The signer port changes nothing without a TPM: the same trust.json key, the
    production signer's signatures (ed25519: the very bytes; P-256: low-s, and the
    high-s twin while `high_s`)."""
    kit = ReleaseKit(algorithm=algorithm)
    key = seeded_key(algorithm, "fleet:release")
    assert kit.trust()["ciReleaseKey"]["current"] == public_key_json(key)
    pub = public_key_of(key)
    raw, sig = kit.sign({"schemaVersion": 1})
    assert verify_signature(pub, raw, sig)
    if algorithm == "ed25519":
        assert sig == sign(key, raw)
        return
    assert not is_high_s(sig)
    kit.high_s = True
    raw, high = kit.sign({"schemaVersion": 1})
    assert is_high_s(high) and verify_signature(pub, raw, high)
