"""Scenarios: a failure mode (or property) as a declarative record, run on a backend,
judged by checkers, and proven against its mutant.

`prove` runs a scenario twice: with its bug reinjected (the checkers must fail) and
without (they must pass). A regression scenario that cannot fail is worthless.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fleet_sim.checkers import Checker, Verdict, passed, run_checkers
from fleet_sim.world import SimConfig, World

from .mutants import MUTANTS, injected


@dataclass(frozen=True, kw_only=True)
class Scenario:
    id: str
    """kebab-case, as `fleet-harness run` takes it."""
    source: str
    """Where the failure mode is documented (seed and section)."""
    summary: str
    config: Callable[[], SimConfig]
    checks: Sequence[Checker]
    mutant: str | None = None
    backends: frozenset[str] = field(default_factory=lambda: frozenset({"sim"}))

    def __post_init__(self) -> None:
        if self.mutant is not None and self.mutant not in MUTANTS:
            raise ValueError(f"scenario {self.id}: unknown mutant {self.mutant!r}")


@dataclass(frozen=True, kw_only=True)
class Outcome:
    scenario: str
    mutant: str | None
    verdicts: Sequence[Verdict]
    wall_secs: float
    sim_secs: float
    events: int
    trace_hash: str

    @property
    def passed(self) -> bool:
        return passed(self.verdicts)


def run_sim(scenario: Scenario, *, mutant: str | None = None) -> Outcome:
    started = time.perf_counter()
    if mutant is None:
        world = World(scenario.config()).run()
    else:
        with injected(mutant):
            world = World(scenario.config()).run()
    return Outcome(
        scenario=scenario.id,
        mutant=mutant,
        verdicts=run_checkers(world, scenario.checks),
        wall_secs=time.perf_counter() - started,
        sim_secs=world.env.now,
        events=len(world.history.ops),
        trace_hash=world.history.trace_hash(),
    )


@dataclass(frozen=True, kw_only=True)
class Proof:
    fixed: Outcome
    buggy: Outcome | None
    """None when the scenario guards a property, not a fixed bug."""

    @property
    def proven(self) -> bool:
        return self.fixed.passed and (self.buggy is None or not self.buggy.passed)


def prove(scenario: Scenario) -> Proof:
    fixed = run_sim(scenario)
    buggy = run_sim(scenario, mutant=scenario.mutant) if scenario.mutant else None
    return Proof(fixed=fixed, buggy=buggy)
