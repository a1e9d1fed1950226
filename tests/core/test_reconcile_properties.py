"""Properties of `reconcile` over random small fleets (hypothesis).

Fleets: 1–3 channels, ≤ 8 hosts, 1–3 waves per channel, random host states, budgets,
online flags, compliance events, quarantines, host and channel edges. Budgets are
drawn from one fleet-wide list (one max per selector) and resolved over all hosts for
every rollout, as manifests freeze them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from nixfleet.core.actions import (
    Action,
    ConvergeRollout,
    DispatchHost,
    PromoteWave,
    SoakHost,
    WaveBlocked,
)
from nixfleet.core.errors import ParseError
from nixfleet.core.fleet import (
    Channel,
    Compliance,
    Edge,
    Fleet,
    Host,
    Meta,
    PolicyWave,
    RolloutPolicy,
    Selector,
    Wave,
)
from nixfleet.core.gates import (
    GateMode,
    GateView,
    blocking_gate,
    channel_edge_reason,
)
from nixfleet.core.observed import (
    HostObservation,
    Observed,
    Rollout,
    RolloutBudget,
    dump_observed,
    parse_observed,
)
from nixfleet.core.reconcile import reconcile
from nixfleet.core.rollout_state import (
    HEALTHY,
    HOST_ROLLOUT_STATES,
    QUEUED,
    SOAKED,
    HostRolloutState,
    is_in_flight,
)

NOW = datetime(2026, 4, 24, 10, 0, 0, tzinfo=UTC)
CHANNELS = ("alpha", "beta", "gamma")
SELECTORS = (
    Selector(all=True),
    Selector(tags=("web",)),
    Selector(tags_any=("db", "web")),
    Selector(channel="alpha"),
)

# Every state, Queued and the soak path more often, the halting states less.
WEIGHTED_STATES: tuple[HostRolloutState, ...] = (
    *HOST_ROLLOUT_STATES, *(QUEUED,) * 4, *(HEALTHY,) * 3, SOAKED
)

PROPS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Fleet, Observed]:
    channels = CHANNELS[: draw(st.integers(1, 3))]
    n_hosts = draw(st.integers(1, 8))
    hosts: dict[str, Host] = {}
    for i in range(n_hosts):
        name = f"h{i}"
        hosts[name] = Host(
            system="x86_64-linux",
            tags=tuple(draw(st.sets(st.sampled_from(("web", "db"))))),
            channel=draw(st.sampled_from(channels)),
            closure_hash=draw(st.sampled_from((f"sha-{name}", f"sha-{name}", None))),
        )
    waves: dict[str, tuple[Wave, ...]] = {}
    for ch in channels:
        n_waves = draw(st.integers(1, 3))
        members: list[list[str]] = [[] for _ in range(n_waves)]
        for name, h in hosts.items():
            if h.channel == ch and draw(st.integers(0, 5)) > 0:  # else in no wave
                members[draw(st.integers(0, n_waves - 1))].append(name)
        waves[ch] = tuple(
            Wave(hosts=tuple(m), soak_minutes=draw(st.sampled_from((0, 5, 30))))
            for m in members
        )
    policies = {
        "p-halt": _policy("halt"),
        "p-rollback": _policy("rollback-and-halt"),
    }
    fleet_channels = {
        ch: Channel(
            rollout_policy=draw(st.sampled_from(("p-halt", "p-rollback", "p-missing"))),
            reconcile_interval_minutes=5,
            freshness_window=180,
            signing_interval_minutes=60,
            compliance=Compliance(
                frameworks=(), mode=draw(st.sampled_from(("enforce", "enforce", "permissive")))
            ),
        )
        for ch in channels
    }
    names = sorted(hosts)
    host_edges = tuple(
        Edge(gated=a, gates=b)
        for a, b in draw(st.lists(st.tuples(st.sampled_from(names), st.sampled_from(names)),
                                  max_size=3))
        if a != b
    )
    channel_edges = tuple(
        Edge(gated=a, gates=b)
        for a, b in draw(st.lists(st.tuples(st.sampled_from(channels),
                                            st.sampled_from(channels)), max_size=2))
        if a != b
    )
    budget_selectors = draw(st.lists(st.sampled_from(SELECTORS), max_size=2, unique=True))
    budgets = [(s, draw(st.integers(0, 3))) for s in budget_selectors]
    fleet = Fleet(
        schema_version=1,
        hosts=hosts,
        channels=fleet_channels,
        waves=waves,
        meta=Meta(),
        rollout_policies=policies,
        edges=host_edges,
        channel_edges=channel_edges,
    )
    resolved = tuple(
        RolloutBudget(
            selector=s,
            hosts=tuple(sorted(n for n, h in hosts.items() if s.matches(n, h))),
            max_in_flight=m,
        )
        for s, m in budgets
    )
    rollouts: list[Rollout] = []
    for ch in draw(st.permutations(channels)):
        if draw(st.integers(0, 4)) == 0:
            continue
        states = {
            n: draw(st.sampled_from(WEIGHTED_STATES))
            for n, h in hosts.items()
            if h.channel == ch and draw(st.integers(0, 3)) > 0
        }
        since = {
            n: NOW - timedelta(minutes=draw(st.integers(0, 40)))
            for n, s in states.items()
            if s == "Healthy" and draw(st.integers(0, 3)) > 0
        }
        rollouts.append(
            Rollout(
                id=f"{ch}@r2",
                channel=ch,
                target_ref="r2",
                state=draw(st.sampled_from(("Executing", "Executing", "Executing", "Halted",
                                            "Planning"))),
                current_wave=draw(st.integers(0, len(waves[ch]))),
                host_states=states,
                last_healthy_since=since,
                budgets=resolved,
                terminal_at=draw(st.sampled_from((None, None, None, None, NOW))),
            )
        )
    host_state = {
        n: HostObservation(
            online=draw(st.integers(0, 3)) > 0,
            current_generation=draw(st.sampled_from((h.closure_hash, h.closure_hash, "old"))),
        )
        for n, h in hosts.items()
        if draw(st.integers(0, 7)) > 0
    }
    events = {
        ro.id: {n: draw(st.integers(1, 2)) for n in names if draw(st.integers(0, 2)) == 0}
        for ro in rollouts
    }
    quarantined = {
        ch: tuple(f"sha-{n}" for n in names if draw(st.integers(0, 5)) == 0) for ch in channels
    }
    refs = {ch: draw(st.sampled_from(("r1", "r2", "r3"))) for ch in channels}
    rolled = {ch: draw(st.sampled_from(("r1", "r2"))) for ch in channels}
    observed = Observed(
        channel_refs=refs,
        last_rolled_refs=rolled,
        host_state=host_state,
        active_rollouts=tuple(rollouts),
        outstanding_compliance_events_by_rollout=events,
        host_probes_passing={
            n: draw(st.booleans()) for n in names if draw(st.integers(0, 3)) == 0
        },
        host_probes_observed={
            n: draw(st.booleans()) for n in names if draw(st.integers(0, 3)) == 0
        },
        quarantined_closures=quarantined,
    )
    return fleet, observed


def _policy(on_failure: str) -> RolloutPolicy:
    return RolloutPolicy(
        strategy="staged",
        waves=(PolicyWave(selector=Selector(all=True), soak_minutes=5),),
        health_gate={},
        on_health_failure=on_failure,
    )


def _rollout(observed: Observed, rollout_id: str) -> Rollout:
    matches = [ro for ro in observed.active_rollouts if ro.id == rollout_id]
    assert len(matches) == 1, rollout_id
    return matches[0]


def _dispatches(actions: Sequence[Action]) -> list[DispatchHost]:
    return [a for a in actions if isinstance(a, DispatchHost)]


# --- properties ---------------------------------------------------------------------


@PROPS
@given(worlds())
def test_deterministic(world: tuple[Fleet, Observed]) -> None:
    fleet, observed = world
    first = reconcile(fleet, observed, NOW)
    assert reconcile(fleet, observed, NOW) == first
    # The JSON round trip of the view changes nothing either.
    again = parse_observed(dump_observed(observed))
    assert reconcile(fleet, again, NOW) == first


@PROPS
@given(worlds())
def test_dispatches_only_queued_online_hosts_of_the_current_wave(
    world: tuple[Fleet, Observed],
) -> None:
    fleet, observed = world
    actions = reconcile(fleet, observed, NOW)
    for a in _dispatches(actions):
        ro = _rollout(observed, a.rollout)
        assert ro.state == "Executing" and ro.terminal_at is None
        waves = fleet.waves[ro.channel]
        assert ro.current_wave < len(waves)
        assert a.host in waves[ro.current_wave].hosts
        assert ro.state_of(a.host) == "Queued"
        assert observed.is_online(a.host)
        assert a.target_ref == ro.target_ref
    pairs = [(a.rollout, a.host) for a in _dispatches(actions)]
    assert len(pairs) == len(set(pairs))


@PROPS
@given(worlds())
def test_never_exceeds_a_disruption_budget(world: tuple[Fleet, Observed]) -> None:
    fleet, observed = world
    dispatched = {(a.rollout, a.host) for a in _dispatches(reconcile(fleet, observed, NOW))}
    limits: dict[Selector, int] = {}
    for ro in observed.active_rollouts:
        for b in ro.budgets:
            if b.max_in_flight is not None:
                limits[b.selector] = b.max_in_flight
    for selector, limit in limits.items():
        in_flight = new = 0
        for ro in observed.active_rollouts:
            listed = {h for b in ro.budgets if b.selector == selector for h in b.hosts}
            in_flight += sum(1 for h in listed if is_in_flight(ro.state_of(h)))
            new += sum(1 for h in listed if (ro.id, h) in dispatched)
        if new:
            assert in_flight + new <= limit, (selector.summary(), in_flight, new, limit)


@PROPS
@given(
    queued=st.integers(0, 6),
    in_flight=st.integers(0, 4),
    limit=st.integers(0, 5),
    other_rollout_in_flight=st.integers(0, 2),
)
def test_one_tick_fills_a_budget_exactly(
    queued: int, in_flight: int, limit: int, other_rollout_in_flight: int
) -> None:
    """A wave of Queued online hosts under one budget: the tick dispatches exactly the
    free slots, counting in-flight hosts of another rollout with an equal selector and
    the hosts it dispatches itself."""
    web = Selector(tags=("web",))
    names = [f"q{i}" for i in range(queued)] + [f"f{i}" for i in range(in_flight)]
    others = [f"o{i}" for i in range(other_rollout_in_flight)]
    hosts = {n: Host(system="x86_64-linux", tags=("web",), channel="alpha") for n in names}
    hosts |= {n: Host(system="x86_64-linux", tags=("web",), channel="beta") for n in others}
    channel = Channel(
        rollout_policy="p", reconcile_interval_minutes=5, freshness_window=180,
        signing_interval_minutes=60, compliance=Compliance(frameworks=(), mode="enforce"),
    )
    fleet = Fleet(
        schema_version=1,
        hosts=hosts,
        channels={"alpha": channel, "beta": channel},
        waves={"alpha": (Wave(hosts=tuple(names), soak_minutes=5),),
               "beta": (Wave(hosts=tuple(others), soak_minutes=5),)},
        meta=Meta(),
        rollout_policies={"p": _policy("halt")},
    )
    budget = RolloutBudget(selector=web, hosts=tuple(sorted(hosts)), max_in_flight=limit)
    observed = Observed(
        channel_refs={},
        last_rolled_refs={},
        host_state={n: HostObservation(online=True) for n in hosts},
        active_rollouts=(
            Rollout(id="beta@r1", channel="beta", target_ref="r1", state="Executing",
                    current_wave=0, host_states=dict.fromkeys(others, "Activating"),
                    budgets=(budget,)),
            Rollout(id="alpha@r1", channel="alpha", target_ref="r1", state="Executing",
                    current_wave=0, host_states=dict.fromkeys(
                        (f"f{i}" for i in range(in_flight)), "Dispatched"),
                    budgets=(budget,)),
        ),
    )
    dispatched = [a.host for a in _dispatches(reconcile(fleet, observed, NOW))]
    free = max(0, limit - in_flight - other_rollout_in_flight)
    assert dispatched == [f"q{i}" for i in range(min(queued, free))]


@PROPS
@given(worlds())
def test_halted_rollouts_emit_nothing(world: tuple[Fleet, Observed]) -> None:
    fleet, observed = world
    halted = {ro.id for ro in observed.active_rollouts if ro.state == "Halted"}
    for a in reconcile(fleet, observed, NOW):
        assert getattr(a, "rollout", None) not in halted, a


@PROPS
@given(worlds())
def test_converges_exactly_when_every_host_reports_the_target(
    world: tuple[Fleet, Observed],
) -> None:
    fleet, observed = world
    actions = reconcile(fleet, observed, NOW)
    converged = {a.rollout for a in actions if isinstance(a, ConvergeRollout)}
    for ro in observed.active_rollouts:
        waves = fleet.waves[ro.channel]
        advancing = ro.state == "Executing" and ro.terminal_at is None
        if ro.current_wave >= len(waves):
            done = all(
                (obs := observed.host_state.get(n)) is not None
                and obs.current_generation == h.closure_hash
                for n, h in fleet.hosts.items()
                if h.channel == ro.channel and h.closure_hash is not None
            )
        else:
            wave_hosts = waves[ro.current_wave].hosts
            on_last = ro.current_wave == len(waves) - 1
            blocked = fleet.channels[ro.channel].compliance.enforcing and any(
                observed.outstanding_events(ro.id, h) > 0
                for w in waves[: ro.current_wave + 1]
                for h in w.hosts
            )
            done = on_last and not blocked and all(
                ro.state_of(h) in ("Soaked", "Converged") for h in wave_hosts
            )
        assert (ro.id in converged) == (advancing and done), ro


@PROPS
@given(worlds())
def test_promotion_needs_an_all_soaked_wave(world: tuple[Fleet, Observed]) -> None:
    fleet, observed = world
    for a in reconcile(fleet, observed, NOW):
        if isinstance(a, PromoteWave | WaveBlocked):
            ro = _rollout(observed, a.rollout)
            wave = fleet.waves[ro.channel][ro.current_wave]
            assert all(ro.state_of(h) in ("Soaked", "Converged") for h in wave.hosts)
            new = a.new_wave if isinstance(a, PromoteWave) else a.blocked_wave
            assert new == ro.current_wave + 1
        if isinstance(a, SoakHost):
            ro = _rollout(observed, a.rollout)
            assert ro.state_of(a.host) == "Healthy"
            assert NOW - ro.last_healthy_since[a.host] >= timedelta(
                minutes=fleet.waves[ro.channel][ro.current_wave].soak_minutes
            )


@PROPS
@given(worlds(), st.data())
def test_gate_modes_differ_only_on_a_missing_predecessor(
    world: tuple[Fleet, Observed], data: st.DataObject
) -> None:
    fleet, observed = world
    view = GateView.of(observed)
    host = data.draw(st.sampled_from(sorted(fleet.hosts)))
    channel = fleet.hosts[host].channel
    rollout = next((ro for ro in observed.active_rollouts if ro.channel == channel), None)
    rec = blocking_gate(fleet, view, host, rollout, GateMode.RECONCILE)
    dis = blocking_gate(fleet, view, host, rollout, GateMode.DISPATCH)
    if rec == dis:
        return
    # Dispatch blocks earlier, on a channel edge whose predecessor has no rollout and
    # declares hosts; Reconcile mode let that predecessor pass.
    assert dis is not None and dis.gate == "channel-edges"
    preds = [
        e.gates
        for e in fleet.channel_edges
        if e.gated == channel
        and view.first_rollout_on(e.gates) is None
        and any(h.channel == e.gates for h in fleet.hosts.values())
    ]
    assert dis.reason in {channel_edge_reason(p) for p in preds}


# --- parsing never crashes -----------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=10,
)


def _mutate(doc: Any, data: st.DataObject) -> Any:
    """Replace one node of `doc` (a parsed JSON value) with random JSON."""
    if isinstance(doc, dict) and doc and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(doc)))
        out = dict(doc)
        if data.draw(st.integers(0, 3)) == 0:
            del out[key]
        else:
            out[key] = _mutate(doc[key], data)
        return out
    if isinstance(doc, list) and doc and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(doc) - 1))
        return [*doc[:i], _mutate(doc[i], data), *doc[i + 1 :]]
    return data.draw(_json)


@PROPS
@given(worlds(), st.data())
def test_mutated_observed_parses_or_raises_parse_error(
    world: tuple[Fleet, Observed], data: st.DataObject
) -> None:
    _, observed = world
    doc = _mutate(dump_observed(observed), data)
    try:
        parse_observed(doc, source="observed.json")
    except ParseError as exc:
        # One line is the CLI's job (a JSON key may hold a newline; jsonfields keeps it).
        assert str(exc).startswith("observed.json")


REACHABLE = (
    "OpenRollout",
    "RolloutDeferred",
    "DispatchHost",
    "Skip",
    "SoakHost",
    "PromoteWave",
    "WaveBlocked",
    "ConvergeRollout",
    "HaltRollout",
    "RollbackHost",
)


@pytest.mark.parametrize("kind", REACHABLE)
def test_strategy_reaches(kind: str) -> None:
    """Guard against a strategy that never exercises the paths the properties are about."""
    find(
        worlds(),
        lambda w: any(type(a).__name__ == kind for a in reconcile(w[0], w[1], NOW)),
        settings=settings(
            max_examples=3000, database=None, derandomize=True, phases=[Phase.generate]
        ),
    )
