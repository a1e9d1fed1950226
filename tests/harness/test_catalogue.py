"""Every scenario in the catalogue passes as shipped and fails with its bug put back."""

from __future__ import annotations

import pytest

from harness.main import main
from harness.scenario import Scenario, prove
from scenarios import CATALOGUE

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("scenario", CATALOGUE, ids=[s.id for s in CATALOGUE])
def test_scenario_is_proven(scenario: Scenario) -> None:
    proof = prove(scenario)
    assert proof.fixed.passed, proof.fixed.verdicts
    if scenario.mutant is not None:
        assert proof.buggy is not None and not proof.buggy.passed, proof.buggy


def test_ids_are_unique_kebab_case() -> None:
    ids = [s.id for s in CATALOGUE]
    assert len(ids) == len(set(ids))
    assert all(i == i.lower() and " " not in i and "_" not in i for i in ids)


def test_cli_refuses_bad_input_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "no-such-scenario"]) == 2
    assert main(["prove", "--backend", "qemu"]) == 2
    assert main(["run", "clean-rollout", "--report", "/proc/no-such-dir"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "fleet-harness: unknown scenario 'no-such-scenario' (see `fleet-harness list`)",
        "fleet-harness: --backend qemu: not available here (available: sim)",
        "fleet-harness: --report: cannot create /proc/no-such-dir (No such file or directory)",
    ]


def test_cli_run_writes_a_report(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    report = Path(str(tmp_path)) / "rep"
    assert main(["run", "harness-rollback-policy", "--report", str(report)]) == 0
    text = (report / "catalogue.md").read_text()
    assert "| harness-rollback-policy | pass |" in text
    assert "failed-hosts-reverted" in text
