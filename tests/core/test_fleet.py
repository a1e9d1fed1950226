"""fleet.resolved.json (protocol §2.1): lossless parsing, selectors, waves, errors."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixfleet.core import fleet as fl
from nixfleet.core.canonical import canonical_bytes
from nixfleet.core.errors import ParseError
from nixfleet.core.jsonfields import Reader

# --- strategies ----------------------------------------------------------------

names = st.sampled_from(["h1", "h2", "h3", "web-01", "db", "ü"])
channel_names = st.sampled_from(["stable", "edge", "canary"])
texts = st.text(max_size=8)
small = st.integers(min_value=0, max_value=10_000)
tag_lists = st.lists(st.sampled_from(["web", "db", "eu", "us"]), max_size=3)


def nullable(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


selectors = st.fixed_dictionaries(
    {
        "tags": tag_lists,
        "tagsAny": tag_lists,
        "hosts": st.lists(names, max_size=3),
        "channel": nullable(channel_names),
        "all": st.booleans(),
    }
)
hosts = st.fixed_dictionaries(
    {
        "system": st.sampled_from(["x86_64-linux", "aarch64-linux"]),
        "tags": tag_lists,
        "channel": channel_names,
    },
    optional={
        "closureHash": nullable(texts),
        "pubkey": nullable(texts),
        "pin": nullable(
            st.fixed_dictionaries(
                {"commit": texts, "reason": texts}, optional={"expiresAt": nullable(texts)}
            )
        ),
    },
)
channels = st.fixed_dictionaries(
    {
        "rolloutPolicy": st.sampled_from(["p1", "p2"]),
        "reconcileIntervalMinutes": small,
        "freshnessWindow": small,
        "signingIntervalMinutes": small,
        "compliance": st.fixed_dictionaries(
            {
                "frameworks": st.lists(texts, max_size=2),
                "mode": st.sampled_from(fl.COMPLIANCE_MODES),
            }
        ),
    }
)
health_gates = st.fixed_dictionaries(
    {},
    optional={
        "systemdFailedUnits": st.fixed_dictionaries({"max": small}),
        "complianceProbes": st.fixed_dictionaries({"required": st.booleans()}),
    },
)
policies = st.fixed_dictionaries(
    {
        "strategy": st.sampled_from(["staged", "all-at-once"]),
        "waves": st.lists(
            st.fixed_dictionaries({"selector": selectors, "soakMinutes": small}), max_size=3
        ),
        "healthGate": health_gates,
        "onHealthFailure": st.sampled_from(fl.HEALTH_FAILURE_POLICIES),
    }
)
edges = st.fixed_dictionaries(
    {"gated": names, "gates": names}, optional={"reason": nullable(texts)}
)
legacy_edges = st.fixed_dictionaries(
    {"before": channel_names, "after": channel_names}, optional={"reason": nullable(texts)}
)
budgets = st.fixed_dictionaries(
    {"selector": selectors},
    optional={"maxInFlight": nullable(small), "maxInFlightPct": nullable(small)},
)
metas = st.fixed_dictionaries(
    {
        "schemaVersion": st.just(1),
        "signedAt": nullable(
            st.sampled_from(["2026-04-24T10:00:00Z", "2026-04-24T10:00:00.123456789Z"])
        ),
        "ciCommit": nullable(st.text(alphabet="0123456789abcdef", min_size=0, max_size=40)),
    },
    optional={"signatureAlgorithm": nullable(st.sampled_from(["ed25519", "ecdsa-p256"]))},
)
fleet_docs = st.fixed_dictionaries(
    {
        "schemaVersion": st.just(1),
        "hosts": st.dictionaries(names, hosts, max_size=5),
        "channels": st.dictionaries(channel_names, channels, max_size=3),
        "waves": st.dictionaries(
            channel_names,
            st.lists(
                st.fixed_dictionaries({"hosts": st.lists(names, max_size=3), "soakMinutes": small}),
                max_size=3,
            ),
            max_size=3,
        ),
        "meta": metas,
    },
    optional={
        "rolloutPolicies": st.dictionaries(st.sampled_from(["p1", "p2"]), policies, max_size=2),
        "edges": st.lists(edges, max_size=3),
        "channelEdges": st.lists(edges | legacy_edges, max_size=3),
        "disruptionBudgets": st.lists(budgets, max_size=3),
    },
)


@settings(deadline=None)
@given(fleet_docs)
def test_round_trip_is_lossless(doc: dict[str, Any]) -> None:
    parsed = fl.parse_fleet(copy.deepcopy(doc))
    assert canonical_bytes(fl.dump_fleet(parsed)) == canonical_bytes(doc)
    assert fl.parse_fleet(fl.dump_fleet(parsed)) == parsed


@settings(deadline=None, max_examples=30)
@given(fleet_docs)
def test_unknown_top_level_keys_do_not_break_parsing(doc: dict[str, Any]) -> None:
    assert fl.parse_fleet({**doc, "futureKey": [1]}) == fl.parse_fleet(doc)


# --- a fixed fleet -------------------------------------------------------------

SELECTOR_ALL = {"tags": [], "tagsAny": [], "hosts": [], "channel": None, "all": True}
FLEET: dict[str, Any] = {
    "schemaVersion": 1,
    "hosts": {
        "h1": {
            "system": "x86_64-linux",
            "tags": ["web", "eu"],
            "channel": "stable",
            "closureHash": "0123456789abcdfghijklmnpqrsvwxyz-nixos-system-h1-26.05",
            "pubkey": "ssh-ed25519 AAAA h1",
        },
        "h2": {
            "system": "x86_64-linux",
            "tags": ["db"],
            "channel": "stable",
            "closureHash": None,
            "pin": {"commit": "abc", "reason": "freeze"},
        },
        "h3": {"system": "aarch64-linux", "tags": [], "channel": "edge"},
    },
    "channels": {
        "stable": {
            "rolloutPolicy": "p1",
            "reconcileIntervalMinutes": 5,
            "freshnessWindow": 1440,
            "signingIntervalMinutes": 60,
            "compliance": {"frameworks": ["nis2"], "mode": "enforce"},
        },
        "edge": {
            "rolloutPolicy": "missing",
            "reconcileIntervalMinutes": 5,
            "freshnessWindow": 1440,
            "signingIntervalMinutes": 60,
            "compliance": {"frameworks": [], "mode": "disabled"},
        },
    },
    "rolloutPolicies": {
        "p1": {
            "strategy": "staged",
            "waves": [{"selector": SELECTOR_ALL, "soakMinutes": 5}],
            "healthGate": {"systemdFailedUnits": {"max": 0}},
            "onHealthFailure": "rollback-and-halt",
        }
    },
    "waves": {
        "stable": [{"hosts": ["h2"], "soakMinutes": 5}, {"hosts": ["h1", "h2"], "soakMinutes": 10}],
        "edge": [{"hosts": ["h1"], "soakMinutes": 0}],
    },
    "edges": [{"gated": "h1", "gates": "h2", "reason": "db first"}],
    "channelEdges": [{"before": "edge", "after": "stable"}, {"gated": "edge", "gates": "stable"}],
    "disruptionBudgets": [
        {"selector": {**SELECTOR_ALL, "all": False, "tags": ["web"]}, "maxInFlight": 1}
    ],
    "meta": {"schemaVersion": 1, "signedAt": "2026-04-24T10:00:00.123456789Z", "ciCommit": None},
}


def test_fixed_fleet_parses() -> None:
    f = fl.parse_fleet(FLEET)
    assert f.hosts["h1"].closure_hash == "0123456789abcdfghijklmnpqrsvwxyz-nixos-system-h1-26.05"
    assert f.hosts["h2"].pin == fl.Pin(commit="abc", reason="freeze")
    assert f.hosts["h3"].closure_hash is None
    assert f.channels["stable"].compliance.enforcing
    assert not f.channels["edge"].compliance.enforcing
    assert f.rollout_policies["p1"].on_health_failure == fl.ROLLBACK_AND_HALT
    assert f.rollout_policies["p1"].health_gate == {"systemdFailedUnits": {"max": 0}}
    assert f.waves["stable"][1] == fl.Wave(hosts=("h1", "h2"), soak_minutes=10)
    assert f.edges == (fl.Edge(gated="h1", gates="h2", reason="db first"),)
    assert f.disruption_budgets[0].max_in_flight == 1
    assert f.disruption_budgets[0].max_in_flight_pct is None
    assert f.meta.signed_at == "2026-04-24T10:00:00.123456789Z"
    assert fl.dump_fleet(f) == FLEET


def test_absent_and_null_are_distinct() -> None:
    f = fl.parse_fleet(FLEET)
    out = fl.dump_fleet(f)
    assert "closureHash" not in out["hosts"]["h3"]
    assert out["hosts"]["h2"]["closureHash"] is None
    assert "pin" not in out["hosts"]["h1"]
    assert "maxInFlightPct" not in out["disruptionBudgets"][0]
    assert "reason" not in out["channelEdges"][0]


@pytest.mark.parametrize(
    ("meta_extra", "expected"),
    [
        ({}, None),
        ({"signatureAlgorithm": None}, None),
        ({"signatureAlgorithm": "ed25519"}, "ed25519"),
    ],
)
def test_signature_algorithm_absent_vs_null(
    meta_extra: dict[str, Any], expected: str | None
) -> None:
    doc = copy.deepcopy(FLEET)
    doc["meta"].update(meta_extra)
    f = fl.parse_fleet(doc)
    assert f.meta.signature_algorithm == expected
    out = fl.dump_fleet(f)
    assert canonical_bytes(out) == canonical_bytes(doc)
    assert ("signatureAlgorithm" in out["meta"]) == ("signatureAlgorithm" in meta_extra)


def test_absent_and_null_signature_algorithm_give_different_bytes() -> None:
    absent = copy.deepcopy(FLEET)
    null = copy.deepcopy(FLEET)
    null["meta"]["signatureAlgorithm"] = None
    a = canonical_bytes(fl.dump_fleet(fl.parse_fleet(absent)))
    b = canonical_bytes(fl.dump_fleet(fl.parse_fleet(null)))
    assert a != b
    assert b'"signatureAlgorithm":null' in b and b"signatureAlgorithm" not in a


def test_legacy_channel_edges_before_after() -> None:
    f = fl.parse_fleet(FLEET)
    legacy, modern = f.channel_edges
    # `before: edge, after: stable`: stable waits for edge.
    assert (legacy.gated, legacy.gates, legacy.legacy) == ("stable", "edge", True)
    assert (modern.gated, modern.gates, modern.legacy) == ("edge", "stable", False)
    assert legacy == fl.Edge(gated="stable", gates="edge")  # form is not part of equality
    assert fl.dump_fleet(f)["channelEdges"] == FLEET["channelEdges"]


def test_legacy_form_is_refused_for_host_edges() -> None:
    doc = copy.deepcopy(FLEET)
    doc["edges"] = [{"before": "h1", "after": "h2"}]
    with pytest.raises(ParseError, match=r"^fleet\.resolved\.json: edges\[0\]\.gated: missing$"):
        fl.parse_fleet(doc)


def _host(tags: tuple[str, ...] = (), channel: str = "stable") -> fl.Host:
    return fl.Host(system="x86_64-linux", tags=tags, channel=channel)


@pytest.mark.parametrize(
    ("selector", "hostname", "host", "matches"),
    [
        (fl.Selector(all=True), "h1", _host(), True),
        (fl.Selector(), "h1", _host(("web",)), False),
        (fl.Selector(hosts=("h1",)), "h1", _host(), True),
        (fl.Selector(hosts=("h1",)), "h2", _host(), False),
        (fl.Selector(channel="stable"), "h1", _host(), True),
        (fl.Selector(channel="edge"), "h1", _host(), False),
        (fl.Selector(tags=("web", "eu")), "h1", _host(("web", "eu", "x")), True),
        (fl.Selector(tags=("web", "eu")), "h1", _host(("web",)), False),
        (fl.Selector(tags_any=("web", "eu")), "h1", _host(("eu",)), True),
        (fl.Selector(tags_any=("web", "eu")), "h1", _host(("db",)), False),
        (fl.Selector(tags=("db",), hosts=("h9",)), "h1", _host(("db",)), True),
    ],
)
def test_selector_matches(
    selector: fl.Selector, hostname: str, host: fl.Host, matches: bool
) -> None:
    assert selector.matches(hostname, host) is matches


@pytest.mark.parametrize(
    ("selector", "summary"),
    [
        (fl.Selector(all=True, channel="x"), "all"),
        (fl.Selector(channel="stable", tags=("a",)), "channel:stable"),
        (fl.Selector(tags=("web", "eu")), "tags:eu,web"),
        (fl.Selector(tags_any=("web", "eu")), "tags_any:eu,web"),
        (fl.Selector(hosts=("h2", "h1")), "hosts:h1,h2"),
        (fl.Selector(), "unknown"),
    ],
)
def test_selector_summary(selector: fl.Selector, summary: str) -> None:
    assert selector.summary() == summary


def test_selector_serialises_every_key() -> None:
    parsed = fl.parse_selector(Reader.root({"tags": ["a"]}, "x"))
    assert fl.dump_selector(parsed) == {
        "all": False,
        "channel": None,
        "hosts": [],
        "tags": ["a"],
        "tagsAny": [],
    }


def test_wave_index_and_lookups() -> None:
    f = fl.parse_fleet(FLEET)
    assert f.wave_index("h2") == 0  # first containing wave
    assert f.wave_index("h1") == 1  # only its own channel's waves count
    assert f.wave_index("h3") is None  # edge waves list h1, not h3
    assert f.wave_index("nope") is None
    assert f.policy_for("stable") is f.rollout_policies["p1"]
    assert f.policy_for("edge") is None
    assert f.policy_for("nope") is None
    assert f.hosts_on("stable") == ["h1", "h2"]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        parts = path.replace("[", ".[").split(".")
        node: Any = doc
        for part in parts[:-1]:
            node = node[int(part[1:-1])] if part.startswith("[") else node[part]
        last = parts[-1]
        key: Any = int(last[1:-1]) if last.startswith("[") else last
        if value is _DELETE:
            del node[key]
        else:
            node[key] = value

    return apply


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("schemaVersion", _DELETE, "missing"),  # Fleet
        ("hosts.h1.channel", 3, "expected a string, got an integer"),  # Host
        ("hosts.h1.tags[1]", None, "expected a string, got null"),
        ("hosts.h2.pin.reason", _DELETE, "missing"),  # Pin
        ("channels.stable.freshnessWindow", "1440", "expected an integer, got a string"),  # Channel
        ("channels.stable.compliance.mode", _DELETE, "missing"),  # Compliance
        ("rolloutPolicies.p1.onHealthFailure", "panic", "expected one of halt, rollback-and-halt"),
        ("rolloutPolicies.p1.waves[0].soakMinutes", True, "expected an integer, got a boolean"),
        ("rolloutPolicies.p1.waves[0].selector.all", "yes", "expected a boolean, got a string"),
        ("waves.stable[1].soakMinutes", _DELETE, "missing"),  # Wave
        ("waves.stable", {}, "expected an array, got an object"),
        ("edges[0].gates", 1, "expected a string, got an integer"),  # Edge
        ("channelEdges[0].after", _DELETE, "missing"),
        ("disruptionBudgets[0].maxInFlight", "1", "expected an integer, got a string"),  # Budget
        ("disruptionBudgets[0].selector", _DELETE, "missing"),
        ("meta.schemaVersion", _DELETE, "missing"),  # Meta
        ("meta.signedAt", 5, "expected a string, got an integer"),
    ],
)
def test_errors_name_file_and_field(path: str, value: Any, problem: str) -> None:
    doc = copy.deepcopy(FLEET)
    _set(path, value)(doc)
    with pytest.raises(ParseError) as err:
        fl.parse_fleet(doc, source="releases/fleet.resolved.json")
    assert err.value.source == "releases/fleet.resolved.json"
    # A removed legacy `after` makes the edge fall back to the modern form.
    expected_field = "channelEdges[0].gated" if path == "channelEdges[0].after" else path
    assert err.value.field == expected_field
    assert str(err.value).startswith(f"releases/fleet.resolved.json: {expected_field}: {problem}")


def test_default_source_is_the_file_name() -> None:
    with pytest.raises(ParseError, match=r"^fleet\.resolved\.json: expected a JSON object"):
        fl.parse_fleet([])
