"""The rollout reconciler: `reconcile(fleet, observed, now) -> list[Action]` (lifecycle §3.2).

Pure: the CP tick (and the simulator, and `nixfleet reconcile`) builds an `Observed`
view, calls `reconcile`, and performs the actions. Emission order is part of the
contract (the fixtures compare lists):

Phase A (open), channels of `channelRefs` in `channel_order` (Kahn over the fleet's
channel edges, ties alphabetical, cycle leftovers appended alphabetically), for
channel `c` at ref `r`:
  1. skip if `lastRolledRefs[c] == r` (same kind of ref, see `observed.py`);
  2. skip if an observed rollout on `c` is Executing or Planning, even a terminal one
     (a Halted one does not hold: a new ref is how an operator pushes a fix);
  3. skip if `c` is not a fleet channel;
  4. a blocked channel-edge predecessor `p` (Reconcile mode, with the channels opened
     earlier in this tick) ⇒ RolloutDeferred, unless `lastDeferrals[c]` already says
     `{r, p}` (debounce); the channel is not opened;
  5. else OpenRollout, and `c` joins the opened set.

Phase B (advance), each observed rollout in list order:
  - channel not in the fleet ⇒ ChannelUnknown;
  - nothing unless Executing (Planning is reserved; a Halted rollout is stored and
    dispatches nothing more — decisions.md — so it emits nothing at all: rollback of
    its Failed hosts is driven per checkin by H12, not by this tick); nothing once
    terminal; nothing if the fleet has no waves for the channel;
  - currentWave past the last wave (also for the empty wave list of all-at-once
    channels) ⇒ ConvergeRollout iff every host of the channel that declares a closure
    reports it as its current generation; else nothing;
  - else the per-host rules (§2.2) over the current wave's hosts in list order, then,
    if every host is Soaked or Converged: WaveBlocked (enforce mode and outstanding
    events on hosts of waves 0..current), else ConvergeRollout on the last wave, else
    PromoteWave.

Decisions where the reference differs or the spec is silent:
  - Halting tick. When a current-wave host is Failed/Reverted and the channel's policy
    resolves, the tick emits HaltRollout (and RollbackHost for Failed hosts under
    rollback-and-halt) and NO DispatchHost for that rollout's Queued hosts: the CP
    stores Halted when it applies HaltRollout, and a halted rollout dispatches nothing
    more. (The reference keeps dispatching the wave, lifecycle §3.1 / §8.2.) Healthy
    hosts may still soak.
  - Budgets count same-tick dispatches: a host dispatched earlier in this tick (in any
    rollout) occupies a slot of every budget with an equal selector that lists it
    (the reference does not, lifecycle §8.5), so one tick never overshoots a budget.
  - A host listed twice in one wave is handled once (first occurrence).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from .actions import (
    Action,
    ChannelUnknown,
    ConvergeRollout,
    DispatchHost,
    HaltRollout,
    OpenRollout,
    PromoteWave,
    RollbackHost,
    RolloutDeferred,
    Skip,
    SoakHost,
    WaveBlocked,
)
from .fleet import ROLLBACK_AND_HALT, Edge, Fleet, Wave
from .gates import GateMode, GateView, channel_edge_blocker, first_block
from .observed import Deferral, Observed, Rollout
from .rollout_state import (
    CONVERGED,
    EXECUTING,
    FAILED,
    HEALTHY,
    QUEUED,
    SOAKED,
    is_failed,
)

OFFLINE_REASON = "offline"


def deferral_reason(predecessor: str) -> str:
    return (
        f"channel '{predecessor}' has an active rollout - "
        "channelEdges holds OpenRollout until predecessor converges"
    )


def halt_reason(host: str, state: str, policy: str) -> str:
    return f"host {host} {state.lower()} (policy: {policy})"


def channel_order(channels: Iterable[str], channel_edges: Sequence[Edge]) -> list[str]:
    """Topological order over the edges restricted to `channels` (Kahn; the
    alphabetically smallest ready channel first; cycle leftovers appended sorted)."""
    names = set(channels)
    indegree = dict.fromkeys(names, 0)
    successors: dict[str, list[str]] = {c: [] for c in names}
    for e in channel_edges:
        if e.gates in names and e.gated in names:
            successors[e.gates].append(e.gated)
            indegree[e.gated] += 1
    ready = [c for c, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        c = heapq.heappop(ready)
        order.append(c)
        for s in successors[c]:
            indegree[s] -= 1
            if indegree[s] == 0:
                heapq.heappush(ready, s)
    placed = set(order)
    return order + sorted(names - placed)


def reconcile(fleet: Fleet, observed: Observed, now: datetime) -> list[Action]:
    """One reconcile tick: the actions, in the order of lifecycle §3.2."""
    if now.tzinfo is None:
        raise ValueError("reconcile: now must be timezone-aware")
    view = GateView.of(observed)
    actions: list[Action] = []
    opened: set[str] = set()
    _open(fleet, observed, view, opened, actions)
    dispatched: set[tuple[str, str]] = set()
    for rollout in observed.active_rollouts:
        _advance(fleet, observed, view, rollout, now, opened, dispatched, actions)
    return actions


# --- Phase A -------------------------------------------------------------------


def _open(
    fleet: Fleet, observed: Observed, view: GateView, opened: set[str], out: list[Action]
) -> None:
    for c in channel_order(observed.channel_refs, fleet.channel_edges):
        ref = observed.channel_refs[c]
        if observed.last_rolled_refs.get(c) == ref:
            continue
        if any(ro.channel == c and ro.is_executing_or_planning for ro in observed.active_rollouts):
            continue
        if c not in fleet.channels:
            continue
        p = channel_edge_blocker(fleet, view, c, GateMode.RECONCILE, opened)
        if p is not None:
            if observed.last_deferrals.get(c) != Deferral(target_ref=ref, blocked_by=p):
                out.append(
                    RolloutDeferred(
                        channel=c, target_ref=ref, blocked_by=p, reason=deferral_reason(p)
                    )
                )
            continue
        out.append(OpenRollout(channel=c, target_ref=ref))
        opened.add(c)


# --- Phase B -------------------------------------------------------------------


def _advance(
    fleet: Fleet,
    observed: Observed,
    view: GateView,
    ro: Rollout,
    now: datetime,
    opened: set[str],
    dispatched: set[tuple[str, str]],
    out: list[Action],
) -> None:
    if ro.channel not in fleet.channels:
        out.append(ChannelUnknown(channel=ro.channel))
        return
    if ro.state != EXECUTING or ro.terminal_at is not None:
        return
    waves = fleet.waves.get(ro.channel)
    if waves is None:
        return
    if ro.current_wave >= len(waves):
        if _all_hosts_on_closure(fleet, observed, ro.channel):
            out.append(ConvergeRollout(rollout=ro.id))
        return
    wave = waves[ro.current_wave]
    hosts = list(dict.fromkeys(wave.hosts))
    policy = fleet.policy_for(ro.channel)
    halting = policy is not None and any(is_failed(ro.state_of(h)) for h in hosts)
    for h in hosts:
        state = ro.state_of(h)
        if state == QUEUED:
            if halting:
                continue
            if not observed.is_online(h):
                out.append(Skip(host=h, reason=OFFLINE_REASON))
                continue
            reason = first_block(
                fleet,
                view,
                h,
                ro,
                GateMode.RECONCILE,
                opened_this_tick=opened,
                dispatched_this_tick=dispatched,
            )
            if reason is not None:
                out.append(Skip(host=h, reason=reason))
            else:
                out.append(DispatchHost(rollout=ro.id, host=h, target_ref=ro.target_ref))
                dispatched.add((ro.id, h))
        elif state == HEALTHY:
            if _soak_elapsed(observed, ro, h, wave, now):
                out.append(SoakHost(rollout=ro.id, host=h))
        elif is_failed(state) and policy is not None:
            out.append(
                HaltRollout(rollout=ro.id, reason=halt_reason(h, state, policy.on_health_failure))
            )
            if state == FAILED and policy.on_health_failure == ROLLBACK_AND_HALT:
                out.append(RollbackHost(rollout=ro.id, host=h, target_ref=ro.target_ref))
        # Dispatched, Activating, ConfirmWindow: in flight (H5 times them out, not us).
        # Soaked, Converged: done.
    if not all(ro.state_of(h) in (SOAKED, CONVERGED) for h in hosts):
        return
    blocked = _wave_blocked(fleet, observed, ro, waves)
    if blocked is not None:
        out.append(blocked)
    elif ro.current_wave == len(waves) - 1:
        out.append(ConvergeRollout(rollout=ro.id))
    else:
        out.append(PromoteWave(rollout=ro.id, new_wave=ro.current_wave + 1))


def _soak_elapsed(observed: Observed, ro: Rollout, host: str, wave: Wave, now: datetime) -> bool:
    since = ro.last_healthy_since.get(host)
    return (
        since is not None
        and now - since >= timedelta(minutes=wave.soak_minutes)
        and observed.host_probes_passing.get(host, True)
        and observed.host_probes_observed.get(host, True)
    )


def _wave_blocked(
    fleet: Fleet, observed: Observed, ro: Rollout, waves: Sequence[Wave]
) -> WaveBlocked | None:
    channel = fleet.channels[ro.channel]
    if not channel.compliance.enforcing:
        return None
    hosts: set[str] = set()
    for w in waves[: ro.current_wave + 1]:
        hosts.update(w.hosts)
    counts = {h: observed.outstanding_events(ro.id, h) for h in hosts}
    failing = sorted(h for h, n in counts.items() if n > 0)
    if not failing:
        return None
    return WaveBlocked(
        rollout=ro.id,
        blocked_wave=ro.current_wave + 1,
        failing_hosts=tuple(failing),
        failing_events_count=sum(counts[h] for h in failing),
    )


def _all_hosts_on_closure(fleet: Fleet, observed: Observed, channel: str) -> bool:
    for name, decl in fleet.hosts.items():
        if decl.channel != channel or decl.closure_hash is None:
            continue
        obs = observed.host_state.get(name)
        if obs is None or obs.current_generation != decl.closure_hash:
            return False
    return True


# --- what the CP records after performing a tick ---------------------------------


def next_last_rolled_refs(observed: Observed, actions: Iterable[Action]) -> dict[str, str]:
    """`lastRolledRefs` after the CP performs `actions`: each OpenRollout{c, r} records
    r, the same kind of ref as `channelRefs[c]` (lifecycle §8 item 7), so the next tick
    sees the channel as rolled until its ref changes again."""
    refs = dict(observed.last_rolled_refs)
    for a in actions:
        if isinstance(a, OpenRollout):
            refs[a.channel] = a.target_ref
    return refs


def next_last_deferrals(observed: Observed, actions: Iterable[Action]) -> dict[str, Deferral]:
    """The debounce map after `actions`: RolloutDeferred sets it, OpenRollout clears it."""
    deferrals: dict[str, Deferral] = dict(observed.last_deferrals)
    for a in actions:
        if isinstance(a, RolloutDeferred):
            deferrals[a.channel] = Deferral(target_ref=a.target_ref, blocked_by=a.blocked_by)
        elif isinstance(a, OpenRollout):
            deferrals.pop(a.channel, None)
    return deferrals

