"""`nixfleet dr preflight`: one line naming the broken prerequisite, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet_sim.fleetgen import ReleaseKit
from nixfleet.cli.main import main

BASE = ["dr", "preflight", "--agent-cn-suffix", "fleet.test"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        status = main(argv)
    except SystemExit as exc:
        status = int(exc.code or 0)
    captured = capsys.readouterr()
    return status, captured.err


def _operator(tmp_path: Path) -> list[str]:
    return ["--operator-cert", str(tmp_path / "op.pem"), "--operator-key", str(tmp_path / "k")]


def test_missing_trust_file_is_prerequisite_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*BASE, "--trust-file", str(tmp_path / "nope.json"), *_operator(tmp_path)]
    status, err = _run(argv, capsys)
    assert status == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "prerequisite 2 (build-time fallback intact)" in err and "nope.json" in err


def test_no_forge_url_is_prerequisite_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps(ReleaseKit().trust()))
    status, err = _run([*BASE, "--trust-file", str(trust), *_operator(tmp_path)], capsys)
    assert status == 1 and err.count("\n") == 1
    assert "prerequisite 1 (signed artifacts reachable)" in err
    assert "--channel-refs-artifact-url" in err


def test_operator_pair_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _run(BASE, capsys)
    assert status == 2 and err.count("\n") == 1 and "--operator-cert" in err
