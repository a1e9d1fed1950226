"""Unit tables for rollout_state, observed, actions, gates (both modes) and reconcile helpers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nixfleet.core.actions import (
    ACTION_TAGS,
    Action,
    ChannelUnknown,
    ConvergeRollout,
    DispatchHost,
    HaltRollout,
    OpenRollout,
    PromoteWave,
    RollbackHost,
    RolloutDeferred,
    RotateTrustRoot,
    Skip,
    SoakHost,
    WaveBlocked,
    dump_action,
    parse_action,
    parse_actions,
)
from nixfleet.core.errors import ParseError
from nixfleet.core.fleet import (
    Channel,
    Compliance,
    Edge,
    Fleet,
    Host,
    Meta,
    Selector,
    Wave,
    parse_fleet,
)
from nixfleet.core.gates import (
    GATE_NAMES,
    GateMode,
    GateView,
    blocking_gate,
    first_block,
)
from nixfleet.core.observed import (
    Deferral,
    HostObservation,
    Observed,
    Rollout,
    RolloutBudget,
    dump_observed,
    parse_observed,
)
from nixfleet.core.reconcile import (
    channel_order,
    next_last_deferrals,
    next_last_rolled_refs,
    reconcile,
)
from nixfleet.core.rollout_state import (
    HOST_ROLLOUT_STATES,
    is_failed,
    is_in_flight,
    is_terminal_for_ordering,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reconciler"
NOW = datetime(2026, 4, 24, 10, 0, 0, tzinfo=UTC)

# --- rollout_state ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "terminal", "in_flight", "failed"),
    [
        ("Queued", False, False, False),
        ("Dispatched", False, True, False),
        ("Activating", False, True, False),
        ("ConfirmWindow", False, True, False),
        ("Healthy", False, True, False),
        ("Soaked", True, False, False),
        ("Converged", True, False, False),
        ("Reverted", False, False, True),
        ("Failed", False, False, True),
    ],
)
def test_state_predicates(state: Any, terminal: bool, in_flight: bool, failed: bool) -> None:
    assert state in HOST_ROLLOUT_STATES
    assert (is_terminal_for_ordering(state), is_in_flight(state), is_failed(state)) == (
        terminal,
        in_flight,
        failed,
    )


# --- observed ----------------------------------------------------------------------------


def _fixture_docs(name: str) -> list[tuple[str, Any]]:
    return [
        (p.parent.relative_to(FIXTURES).as_posix(), json.loads(p.read_text()))
        for p in sorted(FIXTURES.glob(f"*/*/{name}"))
    ]


@pytest.mark.parametrize(("case", "doc"), _fixture_docs("observed.json"))
def test_observed_round_trips(case: str, doc: Any) -> None:
    observed = parse_observed(doc, source=case)
    dumped = dump_observed(observed)
    assert parse_observed(dumped) == observed
    doc = {k: v for k, v in doc.items() if k != "_comment"}
    assert dumped == doc


def test_absent_host_state_means_queued_and_absent_host_means_offline() -> None:
    o = parse_observed(
        {
            "channelRefs": {},
            "lastRolledRefs": {},
            "hostState": {"a": {"online": True}, "b": {"online": False}},
            "activeRollouts": [
                {"id": "x", "channel": "c", "targetRef": "r", "state": "Executing",
                 "currentWave": 0, "hostStates": {}}
            ],
        }
    )
    assert o.active_rollouts[0].state_of("a") == "Queued"
    assert (o.is_online("a"), o.is_online("b"), o.is_online("c")) == (True, False, False)
    assert o.outstanding_events("x", "a") == 0


def _observed_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "channelRefs": {"stable": "r2"},
        "lastRolledRefs": {},
        "hostState": {"h1": {"online": True}},
        "activeRollouts": [
            {"id": "stable@r2", "channel": "stable", "targetRef": "r2", "state": "Executing",
             "currentWave": 0, "hostStates": {"h1": "Queued"}}
        ],
    }
    doc.update(changes)
    return doc


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"channelRefs": None}, "o.json: channelRefs: expected an object, got null"),
        ({"lastRolledRefs": {"stable": 1}}, "o.json: lastRolledRefs.stable: expected a string"),
        ({"hostState": {"h1": {}}}, "o.json: hostState.h1.online: missing"),
        ({"hostState": {"h1": {"online": True, "currentGeneration": 7}}},
         "o.json: hostState.h1.currentGeneration: expected a string"),
        ({"outstandingComplianceEventsByRollout": {"stable@r2": {"h1": -1}}},
         "o.json: outstandingComplianceEventsByRollout.stable@r2.h1: expected a non-negative"),
        ({"lastDeferrals": {"stable": {"targetRef": "r2"}}},
         "o.json: lastDeferrals.stable.blockedBy: missing"),
        ({"hostProbesPassing": {"h1": "yes"}}, "o.json: hostProbesPassing.h1: expected a boolean"),
        ({"hostProbesObserved": {"h1": 1}}, "o.json: hostProbesObserved.h1: expected a boolean"),
        ({"quarantinedClosures": {"stable": "bad"}},
         "o.json: quarantinedClosures.stable: expected an array"),
    ],
)
def test_observed_parse_errors_name_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ParseError) as exc:
        parse_observed(_observed_doc(**changes), source="o.json")
    assert str(exc.value).startswith(message)


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("state", "Halting", "activeRollouts[0].state"),
        ("hostStates", {"h1": "queued"}, "activeRollouts[0].hostStates.h1"),
        ("currentWave", -1, "activeRollouts[0].currentWave"),
        ("terminalAt", "soon", "activeRollouts[0].terminalAt"),
        ("budgets", [{"selector": {}, "hosts": "h1"}], "activeRollouts[0].budgets[0].hosts"),
        ("budgets", [{"selector": {}, "hosts": [], "maxInFlight": "2"}],
         "activeRollouts[0].budgets[0].maxInFlight"),
    ],
)
def test_rollout_parse_errors_name_the_field(key: str, value: Any, field: str) -> None:
    doc = _observed_doc()
    doc["activeRollouts"][0][key] = value
    with pytest.raises(ParseError) as exc:
        parse_observed(doc, source="o.json")
    assert exc.value.field == field
    assert exc.value.source == "o.json"


# --- actions -----------------------------------------------------------------------------

ONE_OF_EACH: list[Action] = [
    OpenRollout(channel="c", target_ref="r"),
    DispatchHost(rollout="x", host="h", target_ref="r"),
    PromoteWave(rollout="x", new_wave=2),
    ConvergeRollout(rollout="x"),
    HaltRollout(rollout="x", reason="host h failed (policy: halt)"),
    RollbackHost(rollout="x", host="h", target_ref="r"),
    SoakHost(rollout="x", host="h"),
    ChannelUnknown(channel="gone"),
    Skip(host="h", reason="offline"),
    WaveBlocked(rollout="x", blocked_wave=1, failing_hosts=("a", "b"), failing_events_count=3),
    RolloutDeferred(channel="c", target_ref="r", blocked_by="p", reason="why"),
    RotateTrustRoot(which="orgRootKey", retire_at=NOW),
]


def test_one_of_each_action() -> None:
    assert {type(a) for a in ONE_OF_EACH} == set(ACTION_TAGS)


@pytest.mark.parametrize("action", ONE_OF_EACH, ids=lambda a: type(a).__name__)
def test_action_round_trips(action: Action) -> None:
    doc = dump_action(action)
    assert doc["action"] == ACTION_TAGS[type(action)]
    assert parse_action(json.loads(json.dumps(doc))) == action


def test_action_json_shapes() -> None:
    assert dump_action(ONE_OF_EACH[9]) == {
        "action": "wave_blocked", "rollout": "x", "blocked_wave": 1,
        "failing_hosts": ["a", "b"], "failing_events_count": 3,
    }
    assert dump_action(ONE_OF_EACH[11]) == {
        "action": "rotate_trust_root", "which": "orgRootKey", "retire_at": "2026-04-24T10:00:00Z",
    }


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ([{"action": "explode"}], "[0].action"),
        ([{"action": "skip", "host": "h"}], "[0].reason"),
        ([{"action": "promote_wave", "rollout": "x", "new_wave": "1"}], "[0].new_wave"),
        ([1], "[0]"),
    ],
)
def test_parse_actions_errors(doc: Any, field: str) -> None:
    with pytest.raises(ParseError) as exc:
        parse_actions(doc, source="e.json")
    assert (exc.value.source, exc.value.field) == ("e.json", field)


def test_parse_actions_needs_an_array() -> None:
    with pytest.raises(ParseError, match="expected a JSON array"):
        parse_actions({}, source="e.json")


# --- gates ------------------------------------------------------------------------------

CH = Channel(
    rollout_policy="p", reconcile_interval_minutes=5, freshness_window=180,
    signing_interval_minutes=60, compliance=Compliance(frameworks=(), mode="enforce"),
)


def _host(channel: str = "stable", closure: str | None = None) -> Host:
    return Host(system="x86_64-linux", tags=(), channel=channel, closure_hash=closure)


def _fleet(**kw: Any) -> Fleet:
    base: dict[str, Any] = dict(
        schema_version=1,
        hosts={"h1": _host(closure="sha-h1"), "h2": _host(), "e1": _host("edge")},
        channels={"stable": CH, "edge": CH, "empty": CH},
        waves={"stable": (Wave(hosts=("h1",), soak_minutes=5),
                          Wave(hosts=("h2",), soak_minutes=5)),
               "edge": (Wave(hosts=("e1",), soak_minutes=5),)},
        meta=Meta(),
    )
    base.update(kw)
    return Fleet(**base)


def _rollout(**kw: Any) -> Rollout:
    base: dict[str, Any] = dict(
        id="stable@r2", channel="stable", target_ref="r2", state="Executing", current_wave=0
    )
    base.update(kw)
    return Rollout(**base)


def test_gate_order_is_the_lifecycle_table() -> None:
    assert GATE_NAMES == (
        "quarantine", "channel-edges", "wave-promotion", "host-edges", "disruption-budget",
        "compliance-wave",
    )


@pytest.mark.parametrize(
    ("predecessor", "opened", "reconcile_reason", "dispatch_reason"),
    [
        # No rollout observed on the predecessor, not opened: the only mode difference.
        ("edge", frozenset(), None, "channelEdges predecessor channel 'edge' not converged"),
        # ... unless the fleet declares no host on it: both release.
        ("empty", frozenset(), None, None),
        # Opened this tick: both block.
        ("edge", frozenset({"edge"}), "channelEdges predecessor channel 'edge' not converged",
         "channelEdges predecessor channel 'edge' not converged"),
    ],
)
def test_channel_edge_modes(
    predecessor: str, opened: frozenset[str], reconcile_reason: str | None,
    dispatch_reason: str | None,
) -> None:
    fleet = _fleet(channel_edges=(Edge(gated="stable", gates=predecessor),))
    view = GateView(rollouts=(_rollout(),))
    ro = view.rollouts[0]
    assert first_block(fleet, view, "h1", ro, GateMode.RECONCILE,
                       opened_this_tick=opened) == reconcile_reason
    assert first_block(fleet, view, "h1", ro, GateMode.DISPATCH,
                       opened_this_tick=opened) == dispatch_reason


@pytest.mark.parametrize(
    ("edge_rollout", "blocked"),
    [
        (_rollout(id="edge@1", channel="edge", host_states={"e1": "Healthy"}), True),
        (_rollout(id="edge@1", channel="edge", host_states={"e1": "Failed"}), True),
        (_rollout(id="edge@1", channel="edge", host_states={}), True),
        (_rollout(id="edge@1", channel="edge", host_states={"e1": "Soaked"}), False),
        (_rollout(id="edge@1", channel="edge", host_states={"e1": "Converged"}), False),
        (_rollout(id="edge@1", channel="edge", host_states={"e1": "Failed"}, terminal_at=NOW),
         False),
        # A Halted predecessor with a failed host still holds its successors.
        (_rollout(id="edge@1", channel="edge", state="Halted", host_states={"e1": "Failed"}),
         True),
    ],
)
def test_channel_edge_modes_agree_when_the_predecessor_is_observed(
    edge_rollout: Rollout, blocked: bool
) -> None:
    fleet = _fleet(channel_edges=(Edge(gated="stable", gates="edge"),))
    view = GateView(rollouts=(edge_rollout, _rollout()))
    reasons = {
        first_block(fleet, view, "h1", view.rollouts[1], mode) for mode in GateMode
    }
    assert reasons == {"channelEdges predecessor channel 'edge' not converged" if blocked
                       else None}


def test_no_rollout_compares_with_wave_zero_and_skips_rollout_gates() -> None:
    fleet = _fleet(
        edges=(Edge(gated="h2", gates="h1"),),
    )
    view = GateView(outstanding_events={"stable@r2": {"h1": 4}})
    block = blocking_gate(fleet, view, "h2", None, GateMode.DISPATCH)
    assert block is not None and block.gate == "wave-promotion"
    assert block.reason == "wave-promotion: host_wave=1 > current_wave=0"
    assert first_block(fleet, view, "h1", None, GateMode.DISPATCH) is None


def test_host_edge_failed_gating_host_holds() -> None:
    fleet = _fleet(
        waves={"stable": (Wave(hosts=("h1", "h2"), soak_minutes=5),)},
        edges=(Edge(gated="h2", gates="h1"),),
    )
    for state, blocked in (("Failed", True), ("Reverted", True), ("Healthy", True),
                           ("Soaked", False), ("Converged", False)):
        ro = _rollout(host_states={"h1": state})
        reason = first_block(fleet, GateView(rollouts=(ro,)), "h2", ro, GateMode.DISPATCH)
        assert (reason is not None) == blocked, state


def test_budget_without_max_and_unlisted_hosts_pass() -> None:
    sel = Selector(all=True)
    ro = _rollout(
        host_states={"h2": "Dispatched"},
        budgets=(RolloutBudget(selector=sel, hosts=("h1", "h2"), max_in_flight_pct=1),
                 RolloutBudget(selector=Selector(hosts=("h2",)), hosts=("h2",),
                               max_in_flight=1)),
    )
    assert first_block(_fleet(), GateView(rollouts=(ro,)), "h1", ro, GateMode.DISPATCH) is None


def test_budget_counts_dispatched_this_tick_pairs() -> None:
    sel = Selector(channel="stable")
    budget = RolloutBudget(selector=sel, hosts=("h1", "h2"), max_in_flight=1)
    ro = _rollout(budgets=(budget,))
    view = GateView(rollouts=(ro,))
    fleet = _fleet(waves={"stable": (Wave(hosts=("h1", "h2"), soak_minutes=5),)})
    assert first_block(fleet, view, "h1", ro, GateMode.RECONCILE) is None
    assert first_block(
        fleet, view, "h1", ro, GateMode.RECONCILE, dispatched_this_tick={("stable@r2", "h2")}
    ) == "disruption-budget: 1/1 in flight (channel:stable)"
    # A pair of another rollout id does not count against this one's hosts.
    assert first_block(
        fleet, view, "h1", ro, GateMode.RECONCILE, dispatched_this_tick={("other", "h2")}
    ) is None


def test_compliance_wave_counts_each_earlier_host_once() -> None:
    fleet = _fleet(
        hosts={"h1": _host(), "h2": _host(), "h3": _host()},
        waves={"stable": (Wave(hosts=("h1",), soak_minutes=5),
                          Wave(hosts=("h1", "h2"), soak_minutes=5),
                          Wave(hosts=("h3",), soak_minutes=5))},
    )
    ro = _rollout(current_wave=2)
    view = GateView(rollouts=(ro,), outstanding_events={"stable@r2": {"h1": 2, "h2": 1}})
    assert first_block(fleet, view, "h3", ro, GateMode.DISPATCH) == (
        "compliance-wave: 3 outstanding failure(s) on hosts in wave < 2"
    )
    assert first_block(fleet, view, "h1", ro, GateMode.DISPATCH) is None  # wave 0


def test_quarantine_uses_the_declared_closure() -> None:
    ro = _rollout()
    view = GateView(rollouts=(ro,), quarantined_closures={"stable": ("sha-h1",)})
    block = blocking_gate(_fleet(), view, "h1", ro, GateMode.DISPATCH)
    assert block is not None and block.gate == "quarantine"
    on_wave_1 = _rollout(current_wave=1)
    assert first_block(_fleet(), view, "h2", on_wave_1, GateMode.DISPATCH) is None  # no closure


def test_gate_view_of_observed() -> None:
    ro = _rollout()
    o = Observed(
        channel_refs={}, last_rolled_refs={}, host_state={}, active_rollouts=(ro,),
        outstanding_compliance_events_by_rollout={"stable@r2": {"h1": 1}},
        quarantined_closures={"stable": ("x",)},
    )
    view = GateView.of(o)
    assert view.first_rollout_on("stable") is ro and view.first_rollout_on("edge") is None
    assert view.events("stable@r2", "h1") == 1 and view.events("nope", "h1") == 0


# --- reconcile helpers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "edges", "order"),
    [
        (["b", "a", "c"], [], ["a", "b", "c"]),
        (["a", "b", "c"], [("c", "a")], ["b", "c", "a"]),
        (["a", "b", "c"], [("a", "b"), ("b", "a")], ["c", "a", "b"]),
        (["a", "b"], [("zzz", "a"), ("b", "a"), ("b", "a")], ["b", "a"]),
        (["a", "b", "c", "d"], [("d", "c"), ("c", "b"), ("b", "d")], ["a", "b", "c", "d"]),
    ],
)
def test_channel_order(
    channels: list[str], edges: list[tuple[str, str]], order: list[str]
) -> None:
    assert channel_order(channels, [Edge(gates=g, gated=d) for g, d in edges]) == order


def test_next_refs_and_deferrals_after_a_tick() -> None:
    o = Observed(
        channel_refs={"a": "r2", "b": "r9"},
        last_rolled_refs={"a": "r1", "c": "r0"},
        host_state={},
        active_rollouts=(),
        last_deferrals={"a": Deferral(target_ref="r1", blocked_by="x")},
    )
    actions: list[Action] = [
        OpenRollout(channel="a", target_ref="r2"),
        RolloutDeferred(channel="b", target_ref="r9", blocked_by="a", reason="…"),
    ]
    assert next_last_rolled_refs(o, actions) == {"a": "r2", "c": "r0"}
    assert next_last_deferrals(o, actions) == {"b": Deferral(target_ref="r9", blocked_by="a")}


def test_a_performed_tick_is_not_repeated() -> None:
    """Feeding back lastRolledRefs and lastDeferrals (and the rollouts the CP records for
    the opened channels) silences Phase A on the next tick."""
    case = FIXTURES / "channels" / "topological_order"
    fleet = parse_fleet(json.loads((case / "fleet.json").read_text()))
    o = parse_observed(json.loads((case / "observed.json").read_text()))
    first = reconcile(fleet, o, NOW)
    opened = [a for a in first if isinstance(a, OpenRollout)]
    assert [a.channel for a in opened] == ["mid", "zeta"]
    after = Observed(
        channel_refs=o.channel_refs,
        last_rolled_refs=next_last_rolled_refs(o, first),
        host_state=o.host_state,
        active_rollouts=tuple(
            _rollout(id=f"{a.channel}@{a.target_ref}", channel=a.channel,
                     target_ref=a.target_ref)
            for a in opened
        ),
        last_deferrals=next_last_deferrals(o, first),
    )
    assert reconcile(fleet, after, NOW) == [
        DispatchHost(rollout="mid@r1", host="m1", target_ref="r1"),
        DispatchHost(rollout="zeta@r1", host="z1", target_ref="r1"),
    ]


def test_reconcile_needs_an_aware_now() -> None:
    o = Observed(channel_refs={}, last_rolled_refs={}, host_state={}, active_rollouts=())
    with pytest.raises(ValueError, match="timezone-aware"):
        reconcile(_fleet(), o, datetime(2026, 4, 24, 10, 0))


def test_host_observation_defaults() -> None:
    assert HostObservation(online=True).current_generation is None
