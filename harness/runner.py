"""Run a scenario on a backend and prove it against its mutant.

`run` opens a fleet of the scenario's shape on the backend (with the mutant applied
where the backend applies it: in-process on `sim`, inside the child processes on
`local`), runs the steps, then the checkers over the history and the final state.
A step that waits in vain fails the run with its line. `prove` runs it as shipped (it
must pass) and with its bug put back (it must fail).

Backends register here by name; `ssh`, `qemu` and `tpm` plug in the same way.
"""

from __future__ import annotations

import importlib
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from .fleet import (
    CommandFailed,
    Fleet,
    NotAvailable,
    Run,
    Scenario,
    Shape,
    StepFailed,
    StepTimeout,
    Verdict,
    not_written,
    passed,
    run_checkers,
)

OpenFleet = Callable[[Shape, Path, "str | None"], AbstractContextManager[Fleet]]
"""`open(shape, workdir, mutant)`: a fleet, closed (every process stopped) on exit."""

BACKENDS: dict[str, str] = {
    "sim": "harness.backends.sim:open_fleet",
    "local": "harness.backends.local:open_fleet",
    "tpm": "harness.backends.tpm:open_fleet",
    "ssh": "harness.backends.ssh:open_fleet",
}
"""Backend name → `module:function` of its `OpenFleet` (imported when first used)."""

WAITING: dict[str, str] = {
    "qemu": "the QEMU backend (QEMU issue)",
}
"""Backends named by the catalogue that are not built yet, and what they wait for."""


TPM_NOT_PROVEN = (
    "not proven on tpm yet: the tpm backend (local, release key in a TPM) proves "
    "ecdsa-high-s-tpm and dr-cp-db-wipe-recovery so far"
)
"""Why other entries the catalogue lists for `tpm` do not run there yet."""


SSH_NOT_PROVEN = "not proven on ssh yet (five entries are: the README's lab workflow)"
"""Why other entries the catalogue lists for `ssh` do not run there yet."""


FIELD_REPORT = "section E belongs to the field-report issue (store-fix, cache doctor, link drop)"
"""Why the field report's entries (section E) do not run on `local` yet."""


def waiting_entry(
    scenario_id: str, *, source: str, backends: Iterable[str], why: str | None = None
) -> Scenario:
    """A catalogue entry that runs on no backend here yet: listed with `why` (default:
    the backends it needs) against each built backend the catalogue names for it."""
    listed = frozenset(backends)
    reason = why or f"needs the {' or '.join(sorted(listed))} backend"
    return Scenario(
        id=scenario_id,
        source=source,
        summary=reason,
        shape=Shape(),
        steps=not_written(reason),
        checks=[],
        backends=listed,
        waiting={b: reason for b in listed if b in BACKENDS},
    )


class BackendUnavailable(Exception):
    """The backend cannot run on this machine; the message says why, in one line."""


def opener(backend: str) -> OpenFleet:
    if backend not in BACKENDS:
        known = ", ".join(sorted(BACKENDS))
        raise BackendUnavailable(f"unknown backend {backend!r} (built: {known})")
    module, _, name = BACKENDS[backend].partition(":")
    fn: OpenFleet = getattr(importlib.import_module(module), name)
    return fn


def unavailable(backend: str) -> str | None:
    """Why a built backend cannot run on this machine (None: it can), from its module's
    optional `available()`; opening it would raise BackendUnavailable with the same."""
    module = importlib.import_module(BACKENDS[backend].partition(":")[0])
    check: Callable[[], str | None] | None = getattr(module, "available", None)
    return check() if check is not None else None


@dataclass(frozen=True, kw_only=True)
class Outcome:
    scenario: str
    backend: str
    mutant: str | None
    verdicts: list[Verdict]
    wall_secs: float
    fleet_secs: float
    """How long the run took on the fleet's own clock (simulated on `sim`)."""
    events: int
    trace_hash: str
    history: list[str] = field(default_factory=list, repr=False)
    ran_on: list[str] = field(default_factory=list)
    """Where the run happened, as the backend names it (its optional `ran_on()`: e.g.
    each SSH host with its address); empty where there is nothing to name."""

    @property
    def passed(self) -> bool:
        return passed(self.verdicts)


def run(
    scenario: Scenario,
    backend: str,
    *,
    mutant: str | None = None,
    workdir: Path | None = None,
) -> Outcome:
    started = time.perf_counter()
    open_fleet = opener(backend)
    with tempfile.TemporaryDirectory(prefix=f"fleet-{scenario.id}-") as tmp:
        where = workdir if workdir is not None else Path(tmp)
        with open_fleet(scenario.shape, where, mutant) as fleet:
            step_failure: Verdict | None = None
            try:
                scenario.steps(fleet)
            except (StepTimeout, StepFailed, CommandFailed) as exc:
                step_failure = Verdict("steps", False, str(exc))
            except NotAvailable as exc:  # the scenario asked what this backend cannot do
                step_failure = Verdict("steps", None, f"not available on {backend}: {exc}")
            final = fleet.final()
            record = Run(
                backend=backend, history=fleet.history, final=final, poll_secs=fleet.poll_secs
            )
            verdicts = run_checkers(record, scenario.checks)
            if step_failure is not None:
                verdicts.insert(0, step_failure)
            return Outcome(
                scenario=scenario.id,
                backend=backend,
                mutant=mutant,
                verdicts=verdicts,
                wall_secs=time.perf_counter() - started,
                fleet_secs=fleet.now(),
                events=len(fleet.history),
                trace_hash=fleet.history.trace_hash(),
                history=[e.line() for e in fleet.history.events],
                ran_on=list(getattr(fleet, "ran_on", list)()),
            )


@dataclass(frozen=True, kw_only=True)
class Proof:
    fixed: Outcome
    buggy: Outcome | None
    """None when the scenario guards a property, not a fixed bug."""

    @property
    def proven(self) -> bool:
        return self.fixed.passed and (self.buggy is None or not self.buggy.passed)


def prove(scenario: Scenario, backend: str, *, workdir: Path | None = None) -> Proof:
    fixed = run(scenario, backend, workdir=workdir and workdir / "fixed")
    buggy = (
        run(scenario, backend, mutant=scenario.mutant, workdir=workdir and workdir / "mutant")
        if scenario.mutant
        else None
    )
    return Proof(fixed=fixed, buggy=buggy)
