"""The catalogue as pytest items: one per (scenario, built backend), with markers, named
in JUnit XML, failing readably (verdicts, run) and failing, not skipping, on a backend
that cannot run here."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

import scenarios
from harness import runner
from harness.fleet import Fleet, Scenario, Shape

ROOT = Path(__file__).resolve().parents[2]


def collect(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if line.startswith("scenarios::")]


def test_collect_only_lists_each_scenario_on_each_built_backend() -> None:
    pairs = [
        f"scenarios::{s.id}@{b}"
        for s in scenarios.CATALOGUE
        for b in runner.BACKENDS
        if b in s.runs_on
    ]
    assert collect("scenarios") == pairs
    assert collect("scenarios", "-m", "backend_sim") == [p for p in pairs if p.endswith("@sim")]
    with_mutant = {s.id for s in scenarios.CATALOGUE if s.mutant}
    assert {p.split("::")[1].split("@")[0] for p in collect("scenarios", "-m", "mutant")} == (
        with_mutant
    )


@contextlib.contextmanager
def open_nowhere(shape: Shape, workdir: Path, mutant: str | None) -> Iterator[Fleet]:
    raise runner.BackendUnavailable("needs a machine this test does not have")
    yield  # pragma: no cover


def test_items_prove_and_fail_readably(
    tiny_catalogue: list[Scenario], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(runner.BACKENDS, "nowhere", f"{__name__}:open_nowhere")
    everywhere = frozenset({"sim", "nowhere", "qemu"})
    monkeypatch.setattr(
        scenarios, "CATALOGUE", [replace(s, backends=everywhere) for s in tiny_catalogue]
    )
    xml = tmp_path / "junit.xml"
    status = pytest.main(
        [
            str(ROOT / "scenarios"),
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            f"--junitxml={xml}",
        ]
    )
    assert status == pytest.ExitCode.TESTS_FAILED
    cases = {c.get("name", ""): c for c in ET.parse(xml).getroot().iter("testcase")}
    assert sorted(cases) == [
        "tiny-not-caught@nowhere",
        "tiny-not-caught@sim",
        "tiny-proven@nowhere",
        "tiny-proven@sim",
    ]  # qemu is not built: no item
    assert cases["tiny-proven@sim"].find("failure") is None
    not_caught = cases["tiny-not-caught@sim"].find("failure")
    assert not_caught is not None and (not_caught.text or "").splitlines() == [
        "tiny-not-caught@sim: passes, mutant not caught",
        "  with mutant no-rollback-signal: every checker passed (no-ghost-loops, "
        "activated-once, all-converged, rollout-finished, no-needless-410)",
    ]
    nowhere = cases["tiny-proven@nowhere"].find("failure")
    assert nowhere is not None and (nowhere.text or "") == (
        "tiny-proven@nowhere: backend nowhere unavailable here: "
        "needs a machine this test does not have"
    )
