"""Tiny scenarios for the harness's own plumbing (CLI, reports, pytest plugin): a
four-host release on `sim`, one proven against a mutant it catches, one against a
mutant it cannot catch."""

from __future__ import annotations

import pytest

import scenarios
from fleet_sim.checkers import CLEAN_RUN
from harness.fleet import Fleet, Scenario, Shape
from harness.steps import wait_settled


def release_and_settle(fleet: Fleet) -> None:
    fleet.release()
    wait_settled(fleet)


def tiny(sid: str, mutant: str, backends: frozenset[str]) -> Scenario:
    return Scenario(
        id=sid,
        source=f"test source of {sid}",
        summary="four hosts take one release",
        shape=Shape(hosts=4, waves=1),
        steps=release_and_settle,
        checks=CLEAN_RUN,
        mutant=mutant,
        backends=backends,
    )


TINY_PROVEN = tiny("tiny-proven", "report-hash-prefix", frozenset({"sim"}))
"""The truncated hash makes every host re-activate: the clean-run checkers fail."""
TINY_NOT_CAUGHT = tiny("tiny-not-caught", "no-rollback-signal", frozenset({"sim"}))
"""A clean release never needs the rollback signal: the mutant goes unnoticed."""


@pytest.fixture
def tiny_catalogue(monkeypatch: pytest.MonkeyPatch) -> list[Scenario]:
    catalogue = [TINY_PROVEN, TINY_NOT_CAUGHT]
    monkeypatch.setattr(scenarios, "CATALOGUE", catalogue)
    return catalogue
