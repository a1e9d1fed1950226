"""`ci/teardown` (issue 10, item 8): seed 001's wipe on the local backend with the
runbook's verify checks. CI runs its Python entry point here; the script only
bootstraps first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import teardown

ROOT = Path(__file__).resolve().parents[2]


def test_teardown_passes_every_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert teardown.main(["--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in (
        "CP healthy, snapshot primed",
        "verified-fleet snapshot fresh",
        "revocations replayed",
        "every expected agent checked in",
        "agents back within 2 polls",
        "h3 still refused after the wipe",
    ):
        assert f"PASS  {name}" in out
    assert "FAIL" not in out


def test_the_script_is_executable_and_bootstraps_first() -> None:
    script = ROOT / "ci" / "teardown"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert '"$root/ci/bootstrap.sh"' in text
    assert "-m harness.teardown" in text


def test_bad_arguments_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        teardown.main(["--hosts", "1"])
    assert exc.value.code == 2
    assert "at least 2" in capsys.readouterr().err
