"""`observed.json`: what the reconciler sees of the world (lifecycle §6, protocol §2.6).

The CP projects it from its tables each tick; `nixfleet reconcile --observed` and the
fixtures read it from a file. `parse_observed` validates it (errors name the source and
the field path, unknown state literals included) and `dump_observed` writes it back.

Refs. `channelRefs[c]` and `lastRolledRefs[c]` are refs of the SAME kind: the value
the CP feeds as the channel's ref (the ciCommit it polls). `lastRolledRefs[c]` is the
`channelRefs[c]` for which a rollout was last opened on `c`, so "ref changed" is a
plain equality test (lifecycle §8 item 7; see `reconcile.next_last_rolled_refs`). A
rollout's `targetRef` is that same ref.

Online. `hostState[h].online` is decided by whoever builds the view: per
decisions.md, a host is online iff it checked in within 3 × the poll interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .fleet import Selector, dump_selector, parse_selector
from .jsonfields import Reader, type_name
from .rollout_state import (
    DEFAULT_HOST_STATE,
    EXECUTING,
    HOST_ROLLOUT_STATES,
    PLANNING,
    ROLLOUT_STATES,
    HostRolloutState,
    RolloutState,
    is_host_rollout_state,
    is_rollout_state,
    is_terminal_for_ordering,
)
from .timeutil import format_instant, parse_instant


@dataclass(frozen=True, slots=True, kw_only=True)
class HostObservation:
    online: bool
    current_generation: str | None = None
    """Full store basename of the running system, when known."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutBudget:
    """A disruption budget as frozen in the rollout's manifest: selector resolved."""

    selector: Selector
    hosts: tuple[str, ...]
    max_in_flight: int | None = None
    max_in_flight_pct: int | None = None
    """Carried, never enforced (lifecycle §3.4)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rollout:
    id: str
    channel: str
    target_ref: str
    state: RolloutState
    current_wave: int
    host_states: Mapping[str, HostRolloutState] = field(default_factory=dict)
    last_healthy_since: Mapping[str, datetime] = field(default_factory=dict)
    budgets: tuple[RolloutBudget, ...] = ()
    terminal_at: datetime | None = None

    def state_of(self, host: str) -> HostRolloutState:
        """The host's state in this rollout; absent ⇒ Queued."""
        return self.host_states.get(host, DEFAULT_HOST_STATE)

    @property
    def is_executing_or_planning(self) -> bool:
        return self.state in (EXECUTING, PLANNING)

    @property
    def is_active_for_ordering(self) -> bool:
        """terminalAt unset AND (no host states OR some host not Soaked/Converged)."""
        if self.terminal_at is not None:
            return False
        return not self.host_states or not all(
            is_terminal_for_ordering(s) for s in self.host_states.values()
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Deferral:
    """The last RolloutDeferred emitted for a channel (the debounce key)."""

    target_ref: str
    blocked_by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Observed:
    channel_refs: Mapping[str, str]
    last_rolled_refs: Mapping[str, str]
    host_state: Mapping[str, HostObservation]
    active_rollouts: tuple[Rollout, ...]
    outstanding_compliance_events_by_rollout: Mapping[str, Mapping[str, int]] = field(
        default_factory=dict
    )
    """rolloutId → host → number of outstanding compliance/runtime-gate events."""
    last_deferrals: Mapping[str, Deferral] = field(default_factory=dict)
    host_probes_passing: Mapping[str, bool] = field(default_factory=dict)
    host_probes_observed: Mapping[str, bool] = field(default_factory=dict)
    quarantined_closures: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """channel → quarantined closure hashes (full store basenames)."""

    def is_online(self, host: str) -> bool:
        """Absent from `hostState` counts as offline."""
        obs = self.host_state.get(host)
        return obs is not None and obs.online

    def outstanding_events(self, rollout_id: str, host: str) -> int:
        return self.outstanding_compliance_events_by_rollout.get(rollout_id, {}).get(host, 0)


# --- parsing -----------------------------------------------------------------


def _scalar_map(
    r: Reader, key: str, kind: type, what: str, *, required: bool = False
) -> dict[str, Any]:
    """A map of scalars `{name: value}`; absent ⇒ empty unless required."""
    if not r.has(key) and not required:
        return {}
    sub = r.sub(key)
    out: dict[str, Any] = {}
    for name, value in sub.obj.items():
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise sub.fail(name, f"expected {what}, got {_describe(value)}")
        out[name] = value
    return out


def _describe(value: object) -> str:
    if isinstance(value, str) and len(value) <= 40:
        return repr(value)
    return type_name(value)


def _count(sub: Reader, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise sub.fail(name, f"expected a non-negative integer, got {_describe(value)}")
    if value < 0:
        raise sub.fail(name, f"expected a non-negative integer, got {value}")
    return value


def _instant(sub: Reader, name: str, value: object) -> datetime:
    if not isinstance(value, str):
        raise sub.fail(name, f"expected an RFC 3339 timestamp, got {_describe(value)}")
    return parse_instant(value, source=sub.source, field=sub.field(name))


def _host_state_literal(sub: Reader, name: str, value: object) -> HostRolloutState:
    if not is_host_rollout_state(value):
        raise sub.fail(
            name, f"expected one of {', '.join(HOST_ROLLOUT_STATES)}, got {_describe(value)}"
        )
    return value


def _parse_budget(r: Reader) -> RolloutBudget:
    return RolloutBudget(
        selector=parse_selector(r.sub("selector")),
        hosts=r.str_list("hosts"),
        max_in_flight=_opt_count(r, "maxInFlight"),
        max_in_flight_pct=_opt_count(r, "maxInFlightPct"),
    )


def _opt_count(r: Reader, key: str) -> int | None:
    value = r.obj.get(key)
    return None if value is None else _count(r, key, value)


def _parse_rollout(r: Reader) -> Rollout:
    state = r.raw("state")
    if not is_rollout_state(state):
        allowed = ", ".join(ROLLOUT_STATES)
        raise r.fail("state", f"expected one of {allowed}, got {_describe(state)}")
    host_states: dict[str, HostRolloutState] = {}
    hs = r.sub("hostStates")
    for name, value in hs.obj.items():
        host_states[name] = _host_state_literal(hs, name, value)
    since: dict[str, datetime] = {}
    lhs = r.opt_sub("lastHealthySince")
    if lhs is not None:
        for name, value in lhs.obj.items():
            since[name] = _instant(lhs, name, value)
    terminal = r.obj.get("terminalAt")
    return Rollout(
        id=r.str("id"),
        channel=r.str("channel"),
        target_ref=r.str("targetRef"),
        state=state,
        current_wave=_count(r, "currentWave", r.raw("currentWave")),
        host_states=host_states,
        last_healthy_since=since,
        budgets=tuple(_parse_budget(b) for b in r.list_of("budgets", optional=True)),
        terminal_at=None if terminal is None else _instant(r, "terminalAt", terminal),
    )


def parse_observed(value: Any, *, source: str = "observed.json") -> Observed:
    """Validate a parsed observed document; errors name the source and the field."""
    r = Reader.root(value, source)
    host_state = {
        name: HostObservation(
            online=h.bool("online"), current_generation=h.opt_str("currentGeneration")
        )
        for name, h in r.items("hostState")
    }
    events: dict[str, dict[str, int]] = {}
    for rid, per_host in r.items("outstandingComplianceEventsByRollout", optional=True):
        events[rid] = {h: _count(per_host, h, n) for h, n in per_host.obj.items()}
    quarantined: dict[str, tuple[str, ...]] = {}
    q = r.opt_sub("quarantinedClosures")
    if q is not None:
        for ch in q.obj:
            quarantined[ch] = q.str_list(ch)
    return Observed(
        channel_refs=_scalar_map(r, "channelRefs", str, "a string", required=True),
        last_rolled_refs=_scalar_map(r, "lastRolledRefs", str, "a string", required=True),
        host_state=host_state,
        active_rollouts=tuple(_parse_rollout(x) for x in r.list_of("activeRollouts")),
        outstanding_compliance_events_by_rollout=events,
        last_deferrals={
            ch: Deferral(target_ref=d.str("targetRef"), blocked_by=d.str("blockedBy"))
            for ch, d in r.items("lastDeferrals", optional=True)
        },
        host_probes_passing=_scalar_map(r, "hostProbesPassing", bool, "a boolean"),
        host_probes_observed=_scalar_map(r, "hostProbesObserved", bool, "a boolean"),
        quarantined_closures=quarantined,
    )


# --- emitting ----------------------------------------------------------------


def _dump_budget(b: RolloutBudget) -> dict[str, Any]:
    out: dict[str, Any] = {"selector": dump_selector(b.selector), "hosts": list(b.hosts)}
    if b.max_in_flight is not None:
        out["maxInFlight"] = b.max_in_flight
    if b.max_in_flight_pct is not None:
        out["maxInFlightPct"] = b.max_in_flight_pct
    return out


def dump_rollout(ro: Rollout) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": ro.id,
        "channel": ro.channel,
        "targetRef": ro.target_ref,
        "state": ro.state,
        "currentWave": ro.current_wave,
        "hostStates": dict(ro.host_states),
    }
    if ro.last_healthy_since:
        out["lastHealthySince"] = {h: format_instant(t) for h, t in ro.last_healthy_since.items()}
    if ro.budgets:
        out["budgets"] = [_dump_budget(b) for b in ro.budgets]
    if ro.terminal_at is not None:
        out["terminalAt"] = format_instant(ro.terminal_at)
    return out


def dump_observed(o: Observed) -> dict[str, Any]:
    """The JSON form; optional maps are emitted only when non-empty."""
    out: dict[str, Any] = {
        "channelRefs": dict(o.channel_refs),
        "lastRolledRefs": dict(o.last_rolled_refs),
        "hostState": {
            h: (
                {"online": s.online}
                if s.current_generation is None
                else {"online": s.online, "currentGeneration": s.current_generation}
            )
            for h, s in o.host_state.items()
        },
        "activeRollouts": [dump_rollout(ro) for ro in o.active_rollouts],
    }
    if o.outstanding_compliance_events_by_rollout:
        out["outstandingComplianceEventsByRollout"] = {
            rid: dict(m) for rid, m in o.outstanding_compliance_events_by_rollout.items()
        }
    if o.last_deferrals:
        out["lastDeferrals"] = {
            ch: {"targetRef": d.target_ref, "blockedBy": d.blocked_by}
            for ch, d in o.last_deferrals.items()
        }
    if o.host_probes_passing:
        out["hostProbesPassing"] = dict(o.host_probes_passing)
    if o.host_probes_observed:
        out["hostProbesObserved"] = dict(o.host_probes_observed)
    if o.quarantined_closures:
        out["quarantinedClosures"] = {ch: list(cs) for ch, cs in o.quarantined_closures.items()}
    return out

