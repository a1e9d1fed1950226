"""The dispatch gates (lifecycle §3.4), shared by the reconciler and the checkin path.

One function decides whether a host may be handed its rollout's target now:
`first_block(fleet, view, host, rollout, mode)` returns the Skip reason of the first
gate that blocks, or None when every gate passes. The reconciler calls it in
`GateMode.RECONCILE` for each Queued, online host of a rollout's current wave; the
CP's per-checkin dispatch decision calls it in `GateMode.DISPATCH` over its snapshot
(non-superseded rollouts of the snapshot, manifest budgets, outstanding events,
quarantines) packed into a `GateView`.

Gate order. Lifecycle §3.4's table is followed, and so are its exact reason strings:

    quarantine → channel edges → wave promotion → host edges → disruption budget
    → compliance wave

An issue listed quarantine last; the table lists it first, and the fixed reference bug
behind scenario `quarantine-gate-split-brain` is precisely that "quarantine is the
first gate on both paths": a quarantined closure must never be reported as blocked by
something an operator could wait out. The first block wins, so the order decides the
reason an operator reads (and which one the fixtures pin).

Modes. The ONLY difference between the modes is a channel-edge predecessor that has
no observed rollout and was not opened this tick: RECONCILE treats it as open,
DISPATCH treats it as blocked iff the fleet declares any host on it (fresh-boot
protection: the CP has not recorded the predecessor's rollout yet).

Same-tick budget counting. `dispatched_this_tick` holds (rolloutId, host) pairs the
caller already decided to dispatch in this same decision round; each counts as in
flight for the disruption-budget gate. The reconciler passes the hosts it dispatched
earlier in the tick, so one tick never dispatches past a budget (the reference does no
such counting, lifecycle §8.5). The checkin path passes nothing: each checkin sees the
rows written by the previous ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Literal

from .fleet import Fleet, Host
from .observed import Observed, Rollout, RolloutBudget
from .rollout_state import is_in_flight, is_terminal_for_ordering


class GateMode(StrEnum):
    RECONCILE = "reconcile"
    DISPATCH = "dispatch"


GateName = Literal[
    "quarantine",
    "channel-edges",
    "wave-promotion",
    "host-edges",
    "disruption-budget",
    "compliance-wave",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class GateView:
    """What the gates read besides the fleet.

    `rollouts`: every rollout the gates may see, in a stable order (the first on a
    channel is the one channel edges consult); keep terminal ones, drop superseded
    ones. The `rollout` handed to `first_block` should be one of them.
    """

    rollouts: tuple[Rollout, ...] = ()
    outstanding_events: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """rolloutId → host → outstanding compliance / runtime-gate events."""
    quarantined_closures: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """channel → quarantined closure hashes."""

    @classmethod
    def of(cls, observed: Observed) -> GateView:
        return cls(
            rollouts=observed.active_rollouts,
            outstanding_events=observed.outstanding_compliance_events_by_rollout,
            quarantined_closures=observed.quarantined_closures,
        )

    def first_rollout_on(self, channel: str) -> Rollout | None:
        return next((ro for ro in self.rollouts if ro.channel == channel), None)

    def events(self, rollout_id: str, host: str) -> int:
        return self.outstanding_events.get(rollout_id, {}).get(host, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class GateBlock:
    gate: GateName
    reason: str


def needs_host_states(fleet: Fleet) -> bool:
    """Whether any gate reads hosts' rollout states for this fleet.

    Host edges read the gating host's state, channel edges whether the predecessor's
    rollout is still active-for-ordering, disruption budgets the in-flight hosts. A
    fleet with none of them can be gated on a view without per-host states.
    """
    return bool(fleet.edges or fleet.channel_edges or fleet.disruption_budgets)


# --- reason strings (exact, lifecycle §3.4) ------------------------------------


def quarantine_reason(channel: str, closure: str) -> str:
    return (
        f"channel {channel} closure {closure} quarantined (sustained probe failures); "
        "push a new closure to clear"
    )


def channel_edge_reason(predecessor: str) -> str:
    return f"channelEdges predecessor channel '{predecessor}' not converged"


def wave_promotion_reason(host_wave: int, current_wave: int) -> str:
    return f"wave-promotion: host_wave={host_wave} > current_wave={current_wave}"


def host_edge_reason(gating_host: str) -> str:
    return f"host-edge: gating host '{gating_host}' not yet Soaked/Converged"


def budget_reason(in_flight: int, max_in_flight: int, summary: str) -> str:
    return f"disruption-budget: {in_flight}/{max_in_flight} in flight ({summary})"


def compliance_wave_reason(outstanding: int, wave: int) -> str:
    return f"compliance-wave: {outstanding} outstanding failure(s) on hosts in wave < {wave}"


# --- channel edges ---------------------------------------------------------------


def is_predecessor_blocked(
    fleet: Fleet,
    view: GateView,
    predecessor: str,
    mode: GateMode,
    opened_this_tick: Set[str] = frozenset(),
) -> bool:
    """Lifecycle §3.4 "Predecessor blocked"."""
    ro = view.first_rollout_on(predecessor)
    if ro is not None:
        return ro.is_active_for_ordering
    if predecessor in opened_this_tick:
        return True
    if mode is GateMode.RECONCILE:
        return False
    return any(h.channel == predecessor for h in fleet.hosts.values())


def channel_edge_blocker(
    fleet: Fleet,
    view: GateView,
    channel: str,
    mode: GateMode,
    opened_this_tick: Set[str] = frozenset(),
) -> str | None:
    """The first predecessor (fleet edge order) that holds `channel`, if any.

    Also used by the reconciler's Phase A before emitting OpenRollout.
    """
    for edge in fleet.channel_edges:
        if edge.gated == channel and is_predecessor_blocked(
            fleet, view, edge.gates, mode, opened_this_tick
        ):
            return edge.gates
    return None


# --- the gates -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Query:
    fleet: Fleet
    view: GateView
    host: str
    decl: Host | None
    channel: str
    rollout: Rollout | None
    mode: GateMode
    opened_this_tick: Set[str]
    dispatched_this_tick: Set[tuple[str, str]]


def _quarantine(q: _Query) -> str | None:
    closure = q.decl.closure_hash if q.decl is not None else None
    if closure is not None and closure in q.view.quarantined_closures.get(q.channel, ()):
        return quarantine_reason(q.channel, closure)
    return None


def _channel_edges(q: _Query) -> str | None:
    p = channel_edge_blocker(q.fleet, q.view, q.channel, q.mode, q.opened_this_tick)
    return None if p is None else channel_edge_reason(p)


def _wave_promotion(q: _Query) -> str | None:
    host_wave = q.fleet.wave_index(q.host)
    current = q.rollout.current_wave if q.rollout is not None else 0
    if host_wave is not None and host_wave > current:
        return wave_promotion_reason(host_wave, current)
    return None


def _host_edges(q: _Query) -> str | None:
    if q.rollout is None:
        return None
    for edge in q.fleet.edges:
        if edge.gated != q.host:
            continue
        gating = q.fleet.hosts.get(edge.gates)
        if gating is None or gating.channel != q.channel:
            continue  # cross-channel (or undeclared) gating hosts are ignored
        if not is_terminal_for_ordering(q.rollout.state_of(edge.gates)):
            return host_edge_reason(edge.gates)
    return None


def budget_in_flight(
    view: GateView,
    budget: RolloutBudget,
    dispatched_this_tick: Set[tuple[str, str]] = frozenset(),
) -> int:
    """Σ over all rollouts of their in-flight hosts listed in their own budgets whose
    selector equals `budget.selector` (plus same-tick dispatches of such hosts)."""
    total = 0
    for ro in view.rollouts:
        listed: set[str] = set()
        for b in ro.budgets:
            if b.selector == budget.selector:
                listed.update(b.hosts)
        total += sum(
            1
            for h in listed
            if is_in_flight(ro.state_of(h)) or (ro.id, h) in dispatched_this_tick
        )
    return total


def _disruption_budget(q: _Query) -> str | None:
    if q.rollout is None:
        return None
    for budget in q.rollout.budgets:
        if budget.max_in_flight is None or q.host not in budget.hosts:
            continue
        n = budget_in_flight(q.view, budget, q.dispatched_this_tick)
        if n >= budget.max_in_flight:
            return budget_reason(n, budget.max_in_flight, budget.selector.summary())
    return None


def earlier_wave_hosts(fleet: Fleet, channel: str, wave: int) -> list[str]:
    """Hosts of waves `0..wave-1` of `channel`, deduplicated, in wave order."""
    seen: dict[str, None] = {}
    for w in fleet.waves.get(channel, ())[:wave]:
        seen.update(dict.fromkeys(w.hosts))
    return list(seen)


def _compliance_wave(q: _Query) -> str | None:
    ch = q.fleet.channels.get(q.channel)
    if ch is None or not ch.compliance.enforcing or q.rollout is None:
        return None
    k = q.fleet.wave_index(q.host)
    if k is None or k < 1:
        return None
    rid = q.rollout.id
    n = sum(q.view.events(rid, h) for h in earlier_wave_hosts(q.fleet, q.channel, k))
    return compliance_wave_reason(n, k) if n > 0 else None


GATES: Final[tuple[tuple[GateName, Callable[[_Query], str | None]], ...]] = (
    ("quarantine", _quarantine),
    ("channel-edges", _channel_edges),
    ("wave-promotion", _wave_promotion),
    ("host-edges", _host_edges),
    ("disruption-budget", _disruption_budget),
    ("compliance-wave", _compliance_wave),
)
"""Evaluation order; the first block wins."""

GATE_NAMES: Final[tuple[GateName, ...]] = tuple(name for name, _ in GATES)


def blocking_gate(
    fleet: Fleet,
    view: GateView,
    host: str,
    rollout: Rollout | None,
    mode: GateMode,
    *,
    opened_this_tick: Set[str] = frozenset(),
    dispatched_this_tick: Set[tuple[str, str]] = frozenset(),
) -> GateBlock | None:
    """The first gate that blocks dispatching `rollout`'s target to `host`, or None.

    `rollout` is the rollout of the host's channel (None when there is none: the
    wave-promotion gate then compares with wave 0 and the rollout-bound gates pass).
    A host not declared in the fleet has no closure and takes the rollout's channel.
    """
    decl = fleet.hosts.get(host)
    channel = decl.channel if decl is not None else (rollout.channel if rollout else "")
    q = _Query(
        fleet=fleet,
        view=view,
        host=host,
        decl=decl,
        channel=channel,
        rollout=rollout,
        mode=mode,
        opened_this_tick=opened_this_tick,
        dispatched_this_tick=dispatched_this_tick,
    )
    for name, gate in GATES:
        reason = gate(q)
        if reason is not None:
            return GateBlock(gate=name, reason=reason)
    return None


def first_block(
    fleet: Fleet,
    view: GateView,
    host: str,
    rollout: Rollout | None,
    mode: GateMode,
    *,
    opened_this_tick: Set[str] = frozenset(),
    dispatched_this_tick: Set[tuple[str, str]] = frozenset(),
) -> str | None:
    """The Skip reason of the first blocking gate, or None if the host may dispatch."""
    block = blocking_gate(
        fleet,
        view,
        host,
        rollout,
        mode,
        opened_this_tick=opened_this_tick,
        dispatched_this_tick=dispatched_this_tick,
    )
    return None if block is None else block.reason
