"""The README's catalogue table is the one the scenario modules generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import report
from harness.main import main

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_table_is_generated_from_the_modules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--markdown"]) == 0
    generated = capsys.readouterr().out.strip()
    assert report.readme_table(README.read_text()) == generated, (
        "README catalogue table is stale: run `fleet-harness list --update README.md`"
    )


def test_update_refuses_a_file_without_markers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "README.md"
    plain.write_text("# no table here\n")
    assert main(["list", "--update", str(plain)]) == 2
    assert "has no catalogue markers" in capsys.readouterr().err
    assert plain.read_text() == "# no table here\n"
