"""Many runs: seeds × parameter values through a `concurrent.futures` executor.

A task is a `RunTask` (plain data: config values, fault specs, checker set) and its
result a small JSON-able dict (metrics without series, verdicts), so both travel to
and from worker processes or a Dask cluster cheaply. Nothing here imports matplotlib
or rich: workers stay light.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future, as_completed
from dataclasses import dataclass, field
from typing import Any

from nixfleet.core.errors import ParseError

from .checkers import CLEAN_RUN, DEFAULT, Checker, Verdict, checkins_after_restart, passed
from .checkers import run_checkers as run_all
from .metrics import spread
from .scenario_file import FaultSpec, Scenario
from .world import SimConfig, World

CHECKER_SETS = ("default", "clean")
CP_RESTART_FAULTS = frozenset({"CpCrash", "CpWipe"})


def select_checkers(name: str, config: SimConfig) -> list[Checker]:
    """`default`: the history checkers any run must pass (faults allowed), plus the
    seed-001 check-in deadline (2 polls) when the run restarts its CP; `clean`: a
    fault-free release must converge with every host activated once."""
    base = list(CLEAN_RUN if name == "clean" else DEFAULT)
    if any(type(f).__name__ in CP_RESTART_FAULTS for f in config.faults):
        base.append(checkins_after_restart(polls=2))
    return base


def verdict_dict(v: Verdict) -> dict[str, Any]:
    return {"name": v.name, "ok": v.ok, "detail": v.detail}


def parse_seeds(text: str) -> list[int]:
    """`1-20`, `3`, `1,5,9-12` → sorted distinct seeds."""
    seeds: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, dash, hi = part.partition("-")
        try:
            first = int(lo)
            last = int(hi) if dash else first
        except ValueError:
            raise ParseError(f"--seeds {text}", part, "expected N or N-M") from None
        if last < first:
            raise ParseError(f"--seeds {text}", part, "empty range")
        seeds.update(range(first, last + 1))
    if not seeds:
        raise ParseError(f"--seeds {text}", "", "no seeds")
    return sorted(seeds)


@dataclass(frozen=True, slots=True)
class RunTask:
    """One simulation to run somewhere: picklable, built into a World by the worker."""

    params: tuple[tuple[str, Any], ...]
    """The swept values of this run's combination, in --param order."""
    seed: int
    config: Mapping[str, Any]
    faults: tuple[FaultSpec, ...] = ()
    checkers: str = "default"
    source: str = "command line"


def _quiet_logs() -> None:
    """In a worker process, silence the production code's warnings (halt lines, …):
    the history has them. The caller's own process keeps its logging as it is."""
    if multiprocessing.parent_process() is None:
        return
    logger = logging.getLogger("nixfleet")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())


def run_task(task: RunTask) -> dict[str, Any]:
    """Run one simulation and return its metrics and verdicts (small, picklable)."""
    from .metrics import compute

    _quiet_logs()
    scenario = Scenario(config=dict(task.config), faults=task.faults, source=task.source)
    config = scenario.with_config(seed=task.seed).sim_config()
    world = World(config).run()
    verdicts = run_all(world.as_run(), select_checkers(task.checkers, config))
    return {
        "params": dict(task.params),
        "seed": task.seed,
        "passed": passed(verdicts),
        "verdicts": [verdict_dict(v) for v in verdicts],
        "metrics": compute(world),
    }


def plan(
    scenario: Scenario,
    seeds: Sequence[int],
    params: Sequence[tuple[str, Sequence[Any]]],
    checkers: str = "default",
) -> list[RunTask]:
    """Every combination of the swept values × every seed, in a stable order."""
    names = [name for name, _ in params]
    tasks = []
    for values in itertools.product(*(vals for _, vals in params)):
        combo = tuple(zip(names, values, strict=True))
        config = {**scenario.config, **dict(combo)}
        for seed in seeds:
            tasks.append(RunTask(params=combo, seed=seed, config=config, faults=scenario.faults,
                                 checkers=checkers, source=scenario.source))  # fmt: skip
    return tasks


def execute(
    tasks: Sequence[RunTask],
    executor: Executor,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Submit every task, collect results as they finish; a task that raised becomes a
    failed run carrying the error (a bug in the simulator, never a pass)."""
    futures: dict[Future[dict[str, Any]], RunTask] = {
        executor.submit(run_task, t): t for t in tasks
    }
    results = []
    for fut in as_completed(futures):
        task = futures[fut]
        try:
            result = fut.result()
        except Exception as exc:  # a worker's crash is reported with the run, not raised
            result = {
                "params": dict(task.params), "seed": task.seed, "passed": False,
                "verdicts": [{"name": "run", "ok": None, "detail": f"raised {exc!r}"}],
                "metrics": None, "error": repr(exc),
            }  # fmt: skip
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _key(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items()) or "(base)"


@dataclass
class Combination:
    params: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ok = [r for r in self.runs if r["passed"]]
        metrics = [r["metrics"] for r in self.runs if r.get("metrics")]
        failing: Counter[str] = Counter()
        for r in self.runs:
            for v in r["verdicts"]:
                if v["ok"] is not True:
                    failing[v["name"]] += 1
        return {
            "params": self.params,
            "label": _key(self.params),
            "runs": len(self.runs),
            "passed": len(ok),
            "pass_rate": round(len(ok) / len(self.runs), 4) if self.runs else 0.0,
            "converged_runs": sum(1 for m in metrics if m["convergence_secs"] is not None),
            "convergence_secs": spread(
                m["convergence_secs"] for m in metrics if m["convergence_secs"] is not None
            ),
            "settled_at": spread(m["settled_at"] for m in metrics if m["settled_at"] is not None),
            "events": spread(m["events"] for m in metrics),
            "failing_checkers": dict(sorted(failing.items())),
            "failed_seeds": sorted(r["seed"] for r in self.runs if not r["passed"]),
        }


def aggregate(
    results: Iterable[dict[str, Any]],
    params: Sequence[tuple[str, Sequence[Any]]],
    seeds: Sequence[int],
    *,
    base: Mapping[str, Any],
    faults: Sequence[FaultSpec],
    checkers: str,
) -> dict[str, Any]:
    """One report over all runs, independent of completion order."""
    order = {
        tuple(values): i
        for i, values in enumerate(itertools.product(*(vals for _, vals in params)))
    }
    names = [name for name, _ in params]
    combos: dict[tuple[Any, ...], Combination] = {}
    runs = sorted(results, key=lambda r: (order[tuple(r["params"][n] for n in names)], r["seed"]))
    for r in runs:
        key = tuple(r["params"][n] for n in names)
        combos.setdefault(key, Combination(dict(r["params"]))).runs.append(r)
    summaries = [combos[k].summary() for k in sorted(combos, key=order.__getitem__)]
    return {
        "base": {k: (v if not isinstance(v, tuple) else list(v)) for k, v in base.items()},
        "faults": [{"kind": f.kind, **dict(f.fields)} for f in faults],
        "checkers": checkers,
        "params": {name: list(vals) for name, vals in params},
        "seeds": list(seeds),
        "runs": len(runs),
        "passed": sum(1 for r in runs if r["passed"]),
        "combinations": summaries,
        "results": [
            {
                "params": r["params"], "seed": r["seed"], "passed": r["passed"],
                "trace_hash": (r.get("metrics") or {}).get("trace_hash"),
                "convergence_secs": (r.get("metrics") or {}).get("convergence_secs"),
                "settled_at": (r.get("metrics") or {}).get("settled_at"),
                "events": (r.get("metrics") or {}).get("events"),
                "failed": [v for v in r["verdicts"] if v["ok"] is not True],
                **({"error": r["error"]} if "error" in r else {}),
            }
            for r in runs
        ],
    }  # fmt: skip
