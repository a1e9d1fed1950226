"""The `tpm` backend's availability, said in one line, and its place in the catalogue.
(The scenarios themselves run as catalogue items: `scenarios::<id>@tpm`.)"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import scenarios
from harness import runner
from harness.backends import local, tpm
from harness.main import main


def test_registered_and_not_waiting() -> None:
    assert runner.BACKENDS["tpm"] == "harness.backends.tpm:open_fleet"
    assert "tpm" not in runner.WAITING
    on_tpm = sorted(s.id for s in scenarios.CATALOGUE if "tpm" in s.runs_on)
    assert on_tpm == ["dr-cp-db-wipe-recovery", "ecdsa-high-s-tpm"]


def test_available_here_when_local_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tpm.TCTI_ENV, raising=False)
    why = local.available()
    if why is not None:
        pytest.fail(f"the local backend cannot run here: {why}")
    assert runner.unavailable("tpm") is None


def test_missing_device_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(tpm.TCTI_ENV, f"device:{tmp_path}/tpmrm0")
    assert runner.unavailable("tpm") == (
        f"{tpm.TCTI_ENV}=device:{tmp_path}/tpmrm0: no TPM device {tmp_path}/tpmrm0 "
        "(is the TPM enabled and tpm_tis loaded?)"
    )


def test_missing_swtpm_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A PATH holding everything the local backend needs, and no swtpm."""
    monkeypatch.delenv(tpm.TCTI_ENV, raising=False)
    for tool in ("nix-build", "sqlite3", "curl", "jq", "unshare"):
        found = shutil.which(tool)
        if found is None:
            pytest.fail(f"{tool} is not on PATH")
        os.symlink(found, tmp_path / tool)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert runner.unavailable("tpm") == (
        "no swtpm binary on PATH: install swtpm (apt-get install swtpm swtpm-tools)"
    )


def test_run_with_a_missing_lab_tpm_fails_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv(tpm.TCTI_ENV, "")  # main sets it; monkeypatch restores it
    dev = f"device:{tmp_path}/tpmrm0"
    rc = main(["run", "ecdsa-high-s-tpm", "--backend", "tpm", "--tcti", dev])
    out = capsys.readouterr().out
    assert rc == 1
    assert f"backend tpm unavailable here: {tpm.TCTI_ENV}={dev}: no TPM device" in out
    assert "Traceback" not in out
