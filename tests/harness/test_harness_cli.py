"""`fleet-harness`: listing, refusing bad input in one line before anything runs, and a
prove on `sim` that saves results and renders both report formats."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import scenarios
from harness import runner
from harness.fleet import Scenario
from harness.main import main


def test_list_names_source_backends_here_and_waiting(
    tiny_catalogue: list[Scenario],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(runner, "unavailable", lambda b: None if b == "sim" else "no nix here")
    everywhere = replace(tiny_catalogue[0], backends=frozenset({"sim", "local", "qemu"}))
    monkeypatch.setattr(scenarios, "CATALOGUE", [everywhere])
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:6] == [
        "tiny-proven",
        "    source:   test source of tiny-proven",
        "    mutant:   report-hash-prefix",
        "    here:     sim",
        "    not here: local (no nix here)",
        f"    waiting:  qemu ({runner.WAITING['qemu']})",
    ]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["prove", "no-such", "--backend", "sim"],
            "unknown scenario 'no-such' (see `fleet-harness list`)",
        ),
        (
            ["run", "--backend", "nowhere"],
            "--backend nowhere: unknown backend (built: sim, local, tpm, ssh)",
        ),
        (
            ["prove", "--all", "--backend", "qemu"],
            f"--backend qemu: not built yet (waits for {runner.WAITING['qemu']})",
        ),
        (
            ["prove", "tiny-proven", "--backend", "local"],
            "scenario tiny-proven does not run on local "
            "(local: the catalogue does not list it)",
        ),
        (["prove", "--backend", "sim"], "prove: name scenario ids or --all"),
        (
            ["prove", "tiny-proven", "--all", "--backend", "sim"],
            "prove: name scenario ids or --all, not both",
        ),
        (
            ["prove", "--all", "--backend", "sim", "--report", "/proc/no-such-dir"],
            "--report: cannot write into /proc/no-such-dir (No such file or directory)",
        ),
        (["report", "/nonexistent"], "report: no saved results in /nonexistent/results"),
        (["prove", "--all"], "the following arguments are required: --backend"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_anything_runs(
    tiny_catalogue: list[Scenario],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    line: str,
) -> None:
    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("ran a scenario despite bad input")

    monkeypatch.setattr(runner, "prove", no_run)
    monkeypatch.setattr(runner, "run", no_run)
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own errors
        status = int(exc.code or 0)
    assert status == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].endswith(line) and err[-1].startswith("fleet-harness")
    assert len(err) == 1


def test_prove_on_sim_saves_results_and_both_reports(
    tiny_catalogue: list[Scenario], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rep = tmp_path / "rep"
    assert main(["prove", "tiny-proven", "--backend", "sim", "--report", str(rep)]) == 0
    saved = json.loads((rep / "results" / "tiny-proven@sim.json").read_text())
    assert saved["fixed"]["verdicts"] and saved["buggy"]["mutant"] == "report-hash-prefix"
    assert (rep / "results" / "tiny-proven@sim.mutant.history").read_text().count(" checkin ")

    # A mutant the scenario cannot catch fails the command; both results share one table.
    assert main(["prove", "tiny-not-caught", "--backend", "sim", "--report", str(rep)]) == 1
    out = capsys.readouterr().out
    assert "with mutant no-rollback-signal: every checker passed" in out
    md = (rep / "catalogue.md").read_text()
    assert "| scenario | sim | source |" in md
    assert "| tiny-proven | proven, " in md
    assert "| tiny-not-caught | passes, mutant not caught, " in md
    assert "## tiny-proven@sim: proven" in md
    assert "With mutant report-hash-prefix: failed" in md
    assert "| no-ghost-loops | FAIL | re-dispatched after confirm:" in md
    page = (rep / "catalogue.html").read_text()
    assert "<th>sim</th>" in page and "<td>tiny-not-caught</td>" in page

    # `report` re-renders from the saved results alone.
    (rep / "catalogue.md").unlink()
    assert main(["report", str(rep)]) == 0
    assert (rep / "catalogue.md").read_text() == md


def test_a_backend_that_cannot_run_here_fails_its_pairs_with_the_reason(
    tiny_catalogue: list[Scenario],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def unavailable(*args: object, **kwargs: object) -> None:
        raise runner.BackendUnavailable("needs root mount namespaces")

    monkeypatch.setattr(runner, "prove", unavailable)
    assert main(["prove", "--all", "--backend", "sim", "--report", str(tmp_path)]) == 1
    assert "could not run: backend sim unavailable here: needs root mount namespaces" in (
        capsys.readouterr().out
    )
    assert "| tiny-proven | fails, " in (tmp_path / "catalogue.md").read_text()


def test_list_counts_and_markdown_say_why_an_entry_waits(
    tiny_catalogue: list[Scenario],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(runner, "unavailable", lambda b: None)
    later = replace(
        tiny_catalogue[0], id="later", backends=frozenset({"local"}), waiting={"local": "issue 14"}
    )
    monkeypatch.setattr(scenarios, "CATALOGUE", [tiny_catalogue[0], later])
    assert main(["list", "--markdown"]) == 0
    captured = capsys.readouterr()
    rows = captured.out.splitlines()
    assert rows[0].startswith("| id | source | runs here | mutant | waiting for |")
    assert rows[-1].startswith("| `later` |") and "local (issue 14)" in rows[-1]
    assert "2 entries: 1 run here (1 of them against a mutant), 1 wait" in captured.err
    assert main(["run", "later", "--backend", "local"]) == 2
    assert "does not run on local (local: issue 14)" in capsys.readouterr().err
