"""The catalogue's own invariants. Each (scenario, backend) is proven by its pytest item
(harness.pytest_plugin, collected from `scenarios/`)."""

from __future__ import annotations

from harness import runner
from scenarios import CATALOGUE


def test_ids_are_unique_kebab_case() -> None:
    ids = [s.id for s in CATALOGUE]
    assert len(ids) == len(set(ids))
    assert all(i == i.lower() and " " not in i and "_" not in i for i in ids)


def test_every_scenario_names_built_or_waiting_backends() -> None:
    known = set(runner.BACKENDS) | set(runner.WAITING)
    assert all(s.backends <= known for s in CATALOGUE)
