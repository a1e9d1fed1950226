"""The backend-neutral fleet a scenario drives, in the NixOS test driver's spirit.

A scenario is a function of a `Fleet`: it releases revisions, stops, crashes and wipes
the control plane, cuts hosts off, skews clocks, makes activations or health probes
fail, kills agents, waits for conditions; then checkers judge the recorded `History`
and the `Final` state the fleet reports at the end. Every backend (`sim`: the simpy
world over the production cores; `local`: real CP and agent processes with their own
Nix stores; later `ssh`, `qemu`, `tpm`) implements the same verbs, so a scenario is
written once and never reads a backend's internals.

Time: `Fleet.now()` is seconds since the fleet started, simulated on `sim` and wall
time on `local`. Durations in scenarios are written in agent polls
(`fleet.polls(n)`), so one scenario reads the same on a 60 s simulated poll and a 2 s
real one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleet_sim.checkers import (
    Checker,
    Final,
    HostFinal,
    RolloutFinal,
    Run,
    Verdict,
    passed,
    run_checkers,
)
from fleet_sim.history import Event, History

# The run records and checkers are the simulator's own, shared by every backend.
__all__ = [
    "Checker",
    "Event",
    "Final",
    "History",
    "HostFinal",
    "RolloutFinal",
    "Run",
    "Verdict",
    "passed",
    "run_checkers",
]

# --- history ---------------------------------------------------------------------------

# Event kinds every backend records (checkers rely on these and on their details).
CP_START = "cp-start"  # {boot}
CP_STOP = "cp-stop"  # {}
CP_CRASH = "cp-crash"  # {}
CP_WIPE = "cp-wipe"  # {}
RELEASE = "release"  # {release, rollout}: CI published release `release`, its rollout id
SNAPSHOT = "snapshot"  # {release}: the CP now serves release `release`
CHECKIN = "checkin"  # host
DISPATCH = "dispatch"  # host {rollout, closure}
ACTIVATE = "activate"  # host {closure}: a switch to `closure` started
ACTIVATION_FAILED = "activation-failed"  # host {closure}
CONFIRM = "confirm"  # host {rollout, status, closure}
ROLLBACK = "rollback"  # host {reason}
REVOKE = "revoke"  # host
AGENT_KILL = "agent-crash"  # host
AGENT_START = "agent-start"  # host
FAULT = "fault"  # host? {name, action: start|end}
CALL = "call"  # host? (the caller) {method, path, as_, status}: a scenario's Fleet.call

FORGE_MODES = ("ok", "down", "hang", "unauthorized")
"""`Fleet.forge_fault` modes: healthy; every request answered 503; requests held
unanswered (a partition); 401 (an expired forge token)."""


# --- the fleet a scenario drives ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Shape:
    """The fleet a scenario needs. Backends scale `hosts` to what they can run
    (`local_hosts` real agents on one machine)."""

    hosts: int = 100
    local_hosts: int = 3
    waves: int = 1
    policy: str = "rollback-and-halt"
    soak_minutes: int = 0
    """Each wave's soak at a 60 s poll, i.e. in polls. Declared in whole minutes, so a
    backend with a shorter poll declares its proportion rounded down (0 on `local`
    under 30)."""
    confirm_window_polls: float = 6.0
    """The CP's confirm window in agent polls (360 s at a 60 s poll)."""
    seed: int = 1


class NotAvailable(Exception):
    """A verb this backend cannot perform (e.g. a shell on the simulated CP host)."""


class CommandFailed(AssertionError):
    """A command run on a fleet host (`operator`) exited non-zero; the message says
    which, its status and the tail of its stderr."""


OPERATOR = "operator"
"""`Fleet.call(as_=OPERATOR)`: an operator's client certificate."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer of the CP. `status` 0: no HTTP answer at all (refused, reset)."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)

    def line(self) -> str:
        """For step failures: status and the body's first 200 characters."""
        return f"{self.status} {self.body[:200].decode(errors='replace')}"


class Cp(Protocol):
    def stop(self) -> None:
        """SIGTERM and wait (systemctl stop)."""

    def start(self) -> None:
        """Start and wait until it listens (systemctl start)."""

    def crash(self) -> None:
        """SIGKILL: memory lost, the DB kept."""

    def wipe(self) -> None:
        """Seed 001 step 2: delete state.db, -wal, -shm (the CP must be stopped)."""

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        """Run a read query against the CP's DB (as the cookbook's sqlite3 does)."""


class Fleet(Protocol):
    backend: str
    shape: Shape

    # Read-only, so that each backend's own Cp and a history built on demand conform.
    @property
    def cp(self) -> Cp: ...

    @property
    def history(self) -> History: ...

    @property
    def hosts(self) -> Sequence[str]: ...

    @property
    def waves(self) -> Sequence[Sequence[str]]: ...

    @property
    def poll_secs(self) -> float:
        """The agents' poll interval on this backend."""

    def polls(self, n: float) -> float:
        """`n` agent polls, in seconds of this backend."""

    @property
    def confirm_window(self) -> float:
        """The CP's confirm window in seconds: `shape.confirm_window_polls` polls, or
        the least the CP accepts when that is longer (30 s on `local`)."""

    def now(self) -> float: ...

    # CI and the fleet's hosts
    def release(
        self,
        *,
        failing: Iterable[str] = (),
        unhealthy: Iterable[str] = (),
    ) -> int:
        """Publish the next release (every host a new closure); hosts in `failing` get a
        switch that fails, those in `unhealthy` fail their health probes once switched.
        Returns the release number (the installed one is 0)."""

    def partition(self, hosts: Iterable[str], duration: float) -> None:
        """Cut these hosts off the CP for `duration` seconds (from now)."""

    def forge_fault(self, mode: str) -> None:
        """From now on the CP's upstream forge behaves as `mode` (FORGE_MODES); "ok"
        heals it. Recorded as a `forge` fault."""

    def skew_clock(self, host: str, secs: float) -> None: ...

    def slow_activation(self, hosts: Iterable[str], secs: float) -> None:
        """From the next release on, these hosts' switches take `secs` seconds."""

    def kill_agent(self, host: str) -> None:
        """SIGKILL the host's agent."""

    def start_agent(self, host: str) -> None: ...

    # observing
    def current(self, host: str) -> str | None:
        """The running system's full store basename."""

    def target(self, host: str) -> str | None:
        """What the newest release declares for the host."""

    def converged(self, hosts: Iterable[str] | None = None) -> bool: ...

    def call(
        self,
        method: str,
        path: str,
        *,
        as_: str | None,
        body: object = None,
    ) -> Reply:
        """One request to the CP as a client would send it: `as_` a host name (that
        host's agent certificate), OPERATOR, or None (no client certificate); `body`
        bytes as they are, anything else as JSON. Through the same gates and handlers
        the agents meet: real mTLS on `local`, the CP's `endpoints` on `sim`."""

    def operator(self, cmd: str) -> str:
        """A shell on the CP host (curl | jq, sqlite3, grep on the journal, verbatim);
        NotAvailable on backends without one."""

    # waiting
    def sleep(self, secs: float) -> None: ...

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Until `predicate()` holds; on timeout raise StepTimeout naming `what` and
        what the last try saw."""

    def final(self) -> Final: ...


class StepTimeout(AssertionError):
    """A scenario step waited in vain: the scenario fails with this line."""


class StepFailed(AssertionError):
    """A scenario step saw what must not be (a wrong status, a missing line): the
    scenario fails with this line."""


def expect(ok: bool, what: str, saw: object = "") -> None:
    """A step's assertion: `what` must hold; StepFailed names it and what was seen."""
    if not ok:
        raise StepFailed(f"expected {what}" + (f"; saw {saw}" if saw != "" else ""))


def wait_loop(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    now: Callable[[], float],
    advance: Callable[[float], None],
    interval: float,
    seen: Callable[[], str] = lambda: "",
) -> None:
    """The one `wait_until` loop: sim advances simulated time, local sleeps."""
    deadline = now() + timeout
    while True:
        if predicate():
            return
        if now() >= deadline:
            last = seen()
            raise StepTimeout(
                f"waited {timeout:g} s for {what}" + (f"; saw {last}" if last else "")
            )
        advance(min(interval, max(deadline - now(), 0.0)))


Steps = Callable[[Fleet], None]


def not_written(why: str) -> Steps:
    """The steps of an entry that runs on no backend yet: they say why if asked."""

    def steps(fleet: Fleet) -> None:
        raise NotAvailable(why)

    return steps


@dataclass(frozen=True, kw_only=True)
class Scenario:
    id: str
    """kebab-case, as `fleet-harness run` takes it."""
    source: str
    """Where the failure mode is documented (seed and section)."""
    summary: str
    shape: Shape
    steps: Steps
    checks: Sequence[Checker]
    mutant: str | None = None
    backends: frozenset[str] = frozenset({"sim", "local"})
    """The backends the catalogue lists for it."""
    waiting: Mapping[str, str] = field(default_factory=dict)
    """Backends among `backends` it does not run on yet, each with the reason (the issue
    that brings it, or why it cannot exist on this machine)."""

    @property
    def runs_on(self) -> frozenset[str]:
        """The backends its steps are written for (listed and not waiting)."""
        return self.backends - set(self.waiting)

    def __post_init__(self) -> None:
        from .mutants import MUTANTS

        if self.mutant is not None and self.mutant not in MUTANTS:
            raise ValueError(f"scenario {self.id}: unknown mutant {self.mutant!r}")
