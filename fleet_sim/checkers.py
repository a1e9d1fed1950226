"""Checkers over a finished run's history (Jepsen's checker): each says true, false
or unknown (None) with a detail line. Combined, false wins; a checker that raises
gives unknown, never a pass."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .world import World


@dataclass(frozen=True, slots=True)
class Verdict:
    name: str
    ok: bool | None
    detail: str


Checker = Callable[["World"], Verdict]


def _converged_hosts(world: World) -> set[str]:
    return {name for name, h in world.hosts.items() if h.current == world.target(name)}


def no_ghost_loops(world: World) -> Verdict:
    """After a host's confirm got 204, the CP never dispatches that rollout to it again."""
    confirmed: set[tuple[str, str]] = set()
    repeats: list[str] = []
    for op in world.history.ops:
        if op.kind == "confirm" and op.detail.get("status") == 204:
            confirmed.add((str(op.host), op.detail["rollout"]))
        elif op.kind == "dispatch" and (str(op.host), op.detail["rollout"]) in confirmed:
            repeats.append(f"{op.host}@{op.t:.0f}s")
    if repeats:
        return Verdict("no-ghost-loops", False, f"re-dispatched after confirm: {repeats[:5]}")
    return Verdict("no-ghost-loops", True, f"{len(confirmed)} confirmed, none re-dispatched")


def activated_once(world: World) -> Verdict:
    """Each host switched to each closure at most once."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for op in world.history.of("activate"):
        counts[(str(op.host), op.detail["closure"])] += 1
    twice = sorted(h for (h, _c), n in counts.items() if n > 1)
    if twice:
        return Verdict("activated-once", False, f"{len(twice)} hosts activated a closure twice")
    return Verdict("activated-once", True, f"{len(counts)} activations, none repeated")


def all_converged(world: World) -> Verdict:
    missing = sorted(set(world.hosts) - _converged_hosts(world))
    if missing:
        return Verdict("all-converged", False, f"{len(missing)} hosts not on target: {missing[:5]}")
    return Verdict("all-converged", True, f"{len(world.hosts)} hosts on the declared closure")


def converged_or_accounted(world: World) -> Verdict:
    """Every host runs its target, or the history says why not (failed, rolled back,
    cut off, its wave never reached because the rollout halted)."""
    explained: set[str] = set()
    for kind in ("activation-failed", "rollback", "rollback-failed", "agent-crash"):
        explained.update(str(op.host) for op in world.history.of(kind))
    explained.update(world.network.cut)
    explained.update(h for h, host in world.hosts.items() if not host.up)
    rid = world.rollout_id
    service = world.cp.service
    if rid is not None and service is not None and service.store is not None:
        ro = service.store.rollout(rid)
        if ro is not None and ro.state == "Halted":
            for index, wave in enumerate(world.waves):
                if index > ro.current_wave:
                    explained.update(wave)
    unexplained = sorted(set(world.hosts) - _converged_hosts(world) - explained)
    if unexplained:
        return Verdict(
            "converged-or-accounted",
            False,
            f"{len(unexplained)} hosts neither converged nor accounted for: {unexplained[:5]}",
        )
    return Verdict(
        "converged-or-accounted",
        True,
        f"{len(_converged_hosts(world))} converged, {len(explained)} accounted for",
    )


def rollout_finished(world: World) -> Verdict:
    service, rid = world.cp.service, world.rollout_id
    if service is None or service.store is None or rid is None:
        return Verdict("rollout-finished", None, "no CP or no rollout to inspect")
    ro = service.store.rollout(rid)
    if ro is None:
        return Verdict("rollout-finished", False, f"rollout {rid[:12]} never recorded")
    if ro.terminal_at is not None:
        return Verdict("rollout-finished", True, f"converged at wave {ro.current_wave}")
    if ro.state == "Halted":
        return Verdict("rollout-finished", True, f"halted at wave {ro.current_wave}")
    return Verdict("rollout-finished", False, f"still {ro.state} at wave {ro.current_wave}")


def no_needless_410(world: World) -> Verdict:
    """A host confirming the declared closure is never told to roll back (orphan
    recovery after a CP wipe must answer 204)."""
    bad = [
        f"{op.host}@{op.t:.0f}s"
        for op in world.history.of("confirm")
        if op.detail.get("status") == 410 and op.detail.get("closure") == world.target(str(op.host))
    ]
    if bad:
        return Verdict("no-needless-410", False, f"{len(bad)} confirms of the target got 410")
    return Verdict("no-needless-410", True, f"{world.history.count('confirm')} confirms")


def checkins_after_restart(within: float) -> Checker:
    """After each CP (re)start, every running agent checks in within `within` seconds."""

    def check(world: World) -> Verdict:
        name = f"checkin-within-{within:g}s-of-cp-start"
        starts = [op.t for op in world.history.of("cp-start")][1:]
        if not starts:
            return Verdict(name, None, "the CP never restarted")
        worst = 0.0
        for start in starts:
            first: dict[str, float] = {}
            for op in world.history.ops:
                if op.t >= start and op.kind == "checkin" and op.host not in first:
                    first[str(op.host)] = op.t - start
            missing = [h for h, host in world.hosts.items() if host.up and h not in first]
            if missing:
                return Verdict(name, False, f"{len(missing)} hosts never checked in again")
            worst = max(worst, max(first.values()))
        ok = worst <= within
        return Verdict(name, ok, f"slowest host back after {worst:.1f} s")

    return check


def run_checkers(world: World, checkers: Sequence[Checker]) -> list[Verdict]:
    out = []
    for checker in checkers:
        try:
            out.append(checker(world))
        except Exception as exc:
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
