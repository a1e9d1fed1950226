"""Checkers over a finished run (Jepsen's checker): each reads the recorded history and
the final state the fleet reported, never a backend's objects, and says true, false or
unknown (None) with a detail line. Combined, false wins; a checker that raises gives
unknown, never a pass.

The records here are backend-neutral: the simulated world and the harness's real
backends (`harness/backends/`) both produce a `Run`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .history import History


@dataclass(frozen=True, slots=True)
class Verdict:
    name: str
    ok: bool | None
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HostFinal:
    current: str | None
    """Full store basename of the running system."""
    target: str | None
    """What the newest published release declares for the host."""
    reachable: bool
    """Neither cut off nor with its agent down when the run ended."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutFinal:
    rollout_id: str
    state: str
    current_wave: int
    terminal: bool
    host_states: Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Final:
    """What the fleet reports when a run ends: the hosts' running systems and the CP's
    own rollout tables."""

    hosts: Mapping[str, HostFinal]
    rollouts: Sequence[RolloutFinal]
    """In release order, the newest last."""
    waves: Sequence[Sequence[str]]

    def converged(self) -> set[str]:
        return {n for n, h in self.hosts.items() if h.current is not None and h.current == h.target}

    @property
    def rollout(self) -> RolloutFinal | None:
        return self.rollouts[-1] if self.rollouts else None


@dataclass(frozen=True, slots=True)
class Run:
    """What a checker sees."""

    backend: str
    history: History
    final: Final
    poll_secs: float = 60.0
    """The agents' poll interval on the backend: time bounds scale with it."""


Checker = Callable[[Run], Verdict]


def no_ghost_loops(run: Run) -> Verdict:
    """After a host's confirm got 204, the CP never dispatches that rollout to it again."""
    confirmed: set[tuple[str, str]] = set()
    repeats: list[str] = []
    for op in run.history.events:
        if op.kind == "confirm" and op.detail.get("status") == 204:
            confirmed.add((str(op.host), op.detail["rollout"]))
        elif op.kind == "dispatch" and (str(op.host), op.detail["rollout"]) in confirmed:
            repeats.append(f"{op.host}@{op.t:.0f}s")
    if repeats:
        return Verdict("no-ghost-loops", False, f"re-dispatched after confirm: {repeats[:5]}")
    return Verdict("no-ghost-loops", True, f"{len(confirmed)} confirmed, none re-dispatched")


def activated_once(run: Run) -> Verdict:
    """Each host switched to each closure at most once."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for op in run.history.of("activate"):
        counts[(str(op.host), op.detail["closure"])] += 1
    twice = sorted(h for (h, _c), n in counts.items() if n > 1)
    if twice:
        return Verdict("activated-once", False, f"{len(twice)} hosts activated a closure twice")
    return Verdict("activated-once", True, f"{len(counts)} activations, none repeated")


def all_converged(run: Run) -> Verdict:
    missing = sorted(set(run.final.hosts) - run.final.converged())
    if missing:
        return Verdict("all-converged", False, f"{len(missing)} hosts not on target: {missing[:5]}")
    return Verdict("all-converged", True, f"{len(run.final.hosts)} hosts on the declared closure")


def converged_or_accounted(run: Run) -> Verdict:
    """Every host runs its target, or the history says why not (failed, rolled back,
    cut off, its wave never reached because the rollout halted)."""
    final = run.final
    explained: set[str] = set()
    for kind in ("activation-failed", "rollback", "rollback-failed", "agent-crash"):
        explained.update(str(op.host) for op in run.history.of(kind))
    explained.update(n for n, h in final.hosts.items() if not h.reachable)
    ro = final.rollout
    if ro is not None and ro.state == "Halted":
        for index, wave in enumerate(final.waves):
            if index > ro.current_wave:
                explained.update(wave)
    converged = final.converged()
    unexplained = sorted(set(final.hosts) - converged - explained)
    if unexplained:
        return Verdict(
            "converged-or-accounted",
            False,
            f"{len(unexplained)} hosts neither converged nor accounted for: {unexplained[:5]}",
        )
    return Verdict(
        "converged-or-accounted",
        True,
        f"{len(converged)} converged, {len(explained)} accounted for",
    )


def rollout_finished(run: Run) -> Verdict:
    ro = run.final.rollout
    if ro is None:
        return Verdict("rollout-finished", None, "no rollout to inspect")
    if ro.terminal:
        return Verdict("rollout-finished", True, f"converged at wave {ro.current_wave}")
    if ro.state == "Halted":
        return Verdict("rollout-finished", True, f"halted at wave {ro.current_wave}")
    return Verdict("rollout-finished", False, f"still {ro.state} at wave {ro.current_wave}")


def no_needless_410(run: Run) -> Verdict:
    """A host confirming the declared closure is never told to roll back (orphan
    recovery after a CP wipe must answer 204)."""
    hosts = run.final.hosts
    bad = [
        f"{op.host}@{op.t:.0f}s"
        for op in run.history.of("confirm")
        if op.detail.get("status") == 410
        and op.host in hosts
        and op.detail.get("closure") == hosts[str(op.host)].target
    ]
    if bad:
        return Verdict("no-needless-410", False, f"{len(bad)} confirms of the target got 410")
    return Verdict("no-needless-410", True, f"{run.history.count('confirm')} confirms")


def checkins_after_restart(polls: float) -> Checker:
    """After each CP (re)start, every reachable agent checks in within `polls` agent
    polls (seed 001: back within 70–120 s at a 60 s poll)."""

    def check(run: Run) -> Verdict:
        name = f"checkin-within-{polls:g}-polls-of-cp-start"
        within = polls * run.poll_secs
        starts = [op.t for op in run.history.of("cp-start")][1:]
        if not starts:
            return Verdict(name, None, "the CP never restarted")
        reachable = [n for n, h in run.final.hosts.items() if h.reachable]
        worst = 0.0
        for start in starts:
            first: dict[str, float] = {}
            for op in run.history.events:
                if op.t >= start and op.kind == "checkin" and op.host not in first:
                    first[str(op.host)] = op.t - start
            missing = [h for h in reachable if h not in first]
            if missing:
                return Verdict(name, False, f"{len(missing)} hosts never checked in again")
            worst = max(worst, max(first.values(), default=0.0))
        ok = worst <= within
        return Verdict(name, ok, f"slowest host back after {worst:.1f} s")

    return check


def run_checkers(run: Run, checkers: Sequence[Checker]) -> list[Verdict]:
    out = []
    for checker in checkers:
        try:
            out.append(checker(run))
        except Exception as exc:  # a checker that raises decides nothing
            out.append(Verdict(getattr(checker, "__name__", "checker"), None, f"raised {exc!r}"))
    return out


def passed(verdicts: Sequence[Verdict]) -> bool:
    """All true. False wins and unknown never passes."""
    return all(v.ok is True for v in verdicts)


CLEAN_RUN: list[Checker] = [
    no_ghost_loops,
    activated_once,
    all_converged,
    rollout_finished,
    no_needless_410,
]
DEFAULT: list[Checker] = [
    no_ghost_loops,
    converged_or_accounted,
    rollout_finished,
    no_needless_410,
]
