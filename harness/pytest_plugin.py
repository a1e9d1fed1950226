"""pytest plugin: every (scenario, built backend) of the catalogue is one item.

The `scenarios/` directory (in `testpaths`) is collected as the catalogue, one item
`scenarios::<id>@<backend>` per backend the scenario lists that is built
(`runner.BACKENDS`), so `pytest -n 2 -m backend_sim` proves the sim catalogue in
parallel and JUnit XML names each pair. Markers: `backend_<name>`, `source(text)`,
`mutant(name)` (only on scenarios with one). An item runs `runner.prove`, as
`fleet-harness prove` does; a backend that cannot run here fails its items with the
reason. Loaded with `-p harness.pytest_plugin` (pyproject addopts).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import report, runner
from .fleet import Scenario


class NotProven(AssertionError):
    """The pair failed as shipped or its mutant was not caught (the message explains)."""


def pytest_configure(config: pytest.Config) -> None:
    for name in runner.BACKENDS:
        config.addinivalue_line("markers", f"backend_{name}: a catalogue scenario on {name}")


def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    spec = importlib.util.find_spec("scenarios")  # located, not imported: no catalogue cost
    if spec is not None and spec.origin is not None and path == Path(spec.origin).parent:
        return Catalogue.from_parent(parent, path=path)
    return None


class Catalogue(pytest.Directory):
    def collect(self) -> Iterator[ScenarioItem]:
        import scenarios

        for scenario in scenarios.CATALOGUE:
            for backend in runner.BACKENDS:
                if backend in scenario.runs_on:
                    yield ScenarioItem.from_parent(
                        self, name=f"{scenario.id}@{backend}", scenario=scenario, backend=backend
                    )


class ScenarioItem(pytest.Item):
    def __init__(self, *, scenario: Scenario, backend: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario, self.backend = scenario, backend
        self.add_marker(f"backend_{backend}")
        self.add_marker(pytest.mark.source(scenario.source))
        if scenario.mutant is not None:
            self.add_marker(pytest.mark.mutant(scenario.mutant))

    def runtest(self) -> None:
        started = time.perf_counter()
        proof = runner.prove(self.scenario, self.backend)
        res = report.result(
            self.scenario,
            self.backend,
            proving=True,
            wall_secs=time.perf_counter() - started,
            fixed=proof.fixed,
            buggy=proof.buggy,
        )
        self.user_properties.append(("status", res.label))
        if not res.status.ok:
            raise NotProven(report.explain(res))

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        if isinstance(excinfo.value, NotProven):
            return str(excinfo.value)
        if isinstance(excinfo.value, runner.BackendUnavailable):
            return f"{self.name}: backend {self.backend} unavailable here: {excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.name}: {self.scenario.summary}"
