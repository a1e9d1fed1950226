"""Rollout manifests (protocol §2.2, lifecycle §3.7): projection, ids, lossless parsing."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixfleet.core import manifest as mf
from nixfleet.core.canonical import canonical_bytes
from nixfleet.core.errors import ParseError
from nixfleet.core.fleet import parse_fleet

C1 = "11111111111111111111111111111111-nixos-system-web-1-26.05"
C2 = "22222222222222222222222222222222-nixos-system-web-2-26.05"
C3 = "33333333333333333333333333333333-nixos-system-e1-26.05"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SIGNED_AT = "2026-04-24T10:00:00.123456789Z"


def _selector(**kw: Any) -> dict[str, Any]:
    return {"tags": [], "tagsAny": [], "hosts": [], "channel": None, "all": False, **kw}


def _channel(policy: str, frameworks: list[str]) -> dict[str, Any]:
    return {
        "rolloutPolicy": policy,
        "reconcileIntervalMinutes": 5,
        "freshnessWindow": 1440,
        "signingIntervalMinutes": 60,
        "compliance": {"frameworks": frameworks, "mode": "permissive"},
    }


FLEET: dict[str, Any] = {
    "schemaVersion": 1,
    "hosts": {
        "web-2": {
            "system": "x86_64-linux",
            "tags": ["web"],
            "channel": "stable",
            "closureHash": C2,
        },
        "web-1": {
            "system": "x86_64-linux",
            "tags": ["web"],
            "channel": "stable",
            "closureHash": C1,
        },
        "db": {"system": "x86_64-linux", "tags": ["db"], "channel": "stable", "closureHash": None},
        "e1": {"system": "aarch64-linux", "tags": [], "channel": "edge", "closureHash": C3},
        "lonely": {"system": "x86_64-linux", "tags": ["web"], "channel": "canary"},
    },
    "channels": {
        "stable": _channel("p1", ["nis2", "iso27001"]),
        "edge": _channel("missing", []),
        "canary": _channel("p1", []),
    },
    "rolloutPolicies": {
        "p1": {
            "strategy": "staged",
            "waves": [{"selector": _selector(all=True), "soakMinutes": 5}],
            "healthGate": {"systemdFailedUnits": {"max": 0}},
            "onHealthFailure": "halt",
        }
    },
    "waves": {
        "stable": [
            {"hosts": ["web-2"], "soakMinutes": 5},
            {"hosts": ["web-1", "web-2"], "soakMinutes": 5},
        ],
        "edge": [],
    },
    "disruptionBudgets": [
        {"selector": _selector(tags=["web"]), "maxInFlight": 1},
        {"selector": _selector(channel="edge"), "maxInFlightPct": 50},
    ],
    "meta": {"schemaVersion": 1, "signedAt": SIGNED_AT, "ciCommit": COMMIT},
}

BUDGETS = [
    {
        "selector": _selector(tags=["web"]),
        "hosts": ["lonely", "web-1", "web-2"],
        "maxInFlight": 1,
        "maxInFlightPct": None,
    },
    {
        "selector": _selector(channel="edge"),
        "hosts": ["e1"],
        "maxInFlight": None,
        "maxInFlightPct": 50,
    },
]
META = {
    "schemaVersion": 1,
    "signedAt": SIGNED_AT,
    "ciCommit": COMMIT,
    "signatureAlgorithm": "ed25519",
}


def _project(doc: dict[str, Any]) -> dict[str, mf.RolloutManifest]:
    return mf.project_manifests(parse_fleet(doc), canonical_bytes(doc))


def test_projection_golden() -> None:
    fleet_hash = hashlib.sha256(canonical_bytes(FLEET)).hexdigest()
    manifests = _project(FLEET)
    assert set(manifests) == {"stable", "edge"}  # canary has no host with a closure
    assert mf.dump_manifest(manifests["stable"]) == {
        "schemaVersion": 1,
        "displayName": "stable@01234567",
        "channel": "stable",
        "channelRef": COMMIT,
        "fleetResolvedHash": fleet_hash,
        "hostSet": [
            {"hostname": "web-1", "waveIndex": 1, "targetClosure": C1},
            {"hostname": "web-2", "waveIndex": 0, "targetClosure": C2},
        ],
        "healthGate": {"systemdFailedUnits": {"max": 0}},
        "complianceFrameworks": ["nis2", "iso27001"],
        "disruptionBudgets": BUDGETS,
        "meta": META,
    }
    assert mf.dump_manifest(manifests["edge"]) == {
        "schemaVersion": 1,
        "displayName": "edge@01234567",
        "channel": "edge",
        "channelRef": COMMIT,
        "fleetResolvedHash": fleet_hash,
        "hostSet": [{"hostname": "e1", "waveIndex": 0, "targetClosure": C3}],
        "healthGate": {},
        "complianceFrameworks": [],
        "disruptionBudgets": BUDGETS,
        "meta": META,
    }


def test_rollout_id_is_sha256_of_jcs() -> None:
    m = _project(FLEET)["stable"]
    expected = hashlib.sha256(canonical_bytes(mf.dump_manifest(m))).hexdigest()
    assert mf.rollout_id(m) == expected
    assert mf.manifest_bytes(m) == canonical_bytes(mf.dump_manifest(m))
    assert len(expected) == 64 and expected == expected.lower()
    assert mf.project_rollout_ids(parse_fleet(FLEET), canonical_bytes(FLEET)) == {
        ch: mf.rollout_id(x) for ch, x in _project(FLEET).items()
    }


def test_same_fleet_projects_the_same_ids() -> None:
    first = {ch: mf.rollout_id(m) for ch, m in _project(FLEET).items()}
    second = {ch: mf.rollout_id(m) for ch, m in _project(copy.deepcopy(FLEET)).items()}
    assert first == second
    reparsed = {
        ch: mf.rollout_id(mf.parse_manifest(mf.dump_manifest(m)))
        for ch, m in _project(FLEET).items()
    }
    assert reparsed == first


def test_signed_at_change_changes_every_id() -> None:
    before = {ch: mf.rollout_id(m) for ch, m in _project(FLEET).items()}
    doc = copy.deepcopy(FLEET)
    doc["meta"]["signedAt"] = "2026-04-24T10:00:00.123456788Z"
    after = {ch: mf.rollout_id(m) for ch, m in _project(doc).items()}
    assert set(before) == set(after)
    assert all(before[ch] != after[ch] for ch in before)


def test_signed_at_is_copied_as_the_original_string() -> None:
    doc = copy.deepcopy(FLEET)
    doc["meta"]["signedAt"] = "2026-04-24T10:00:00.000000000Z"
    out = mf.dump_manifest(_project(doc)["stable"])
    assert out["meta"]["signedAt"] == "2026-04-24T10:00:00.000000000Z"


def test_host_set_is_sorted_by_hostname() -> None:
    doc = copy.deepcopy(FLEET)
    for name in ["zz", "aa", "Mm", "web-10"]:
        doc["hosts"][name] = {"system": "x", "tags": [], "channel": "stable", "closureHash": C1}
    names = [e.hostname for e in _project(doc)["stable"].host_set]
    assert names == sorted(names) == ["Mm", "aa", "web-1", "web-10", "web-2", "zz"]


def test_unknown_commit_and_unsigned_meta() -> None:
    doc = copy.deepcopy(FLEET)
    doc["meta"] = {
        "schemaVersion": 1,
        "signedAt": None,
        "ciCommit": None,
        "signatureAlgorithm": None,
    }
    m = _project(doc)["stable"]
    assert m.display_name == "stable@unknown"
    assert m.channel_ref == ""
    assert mf.dump_manifest(m)["meta"] == {
        "schemaVersion": 1,
        "signedAt": None,
        "ciCommit": None,
        "signatureAlgorithm": "ed25519",
    }


def test_signature_algorithm_is_copied() -> None:
    doc = copy.deepcopy(FLEET)
    doc["meta"]["signatureAlgorithm"] = "ecdsa-p256"
    assert mf.dump_manifest(_project(doc)["edge"])["meta"]["signatureAlgorithm"] == "ecdsa-p256"


def test_manifest_lists_host() -> None:
    m = _project(FLEET)["stable"]
    assert mf.manifest_lists_host(m, "web-1", 1)
    assert mf.manifest_lists_host(m, "web-2", 0)
    assert mf.manifest_lists_host(m, "web-2", None)  # no waveIndex means wave 0
    assert not mf.manifest_lists_host(m, "web-1", 0)
    assert not mf.manifest_lists_host(m, "web-1", None)
    assert not mf.manifest_lists_host(m, "db", 0)
    assert not mf.manifest_lists_host(m, "e1", 0)


# --- lossless parsing ------------------------------------------------------------

texts = st.text(max_size=10)
small = st.integers(min_value=0, max_value=10_000)
host_names = st.sampled_from(["a", "b", "c", "web-1", "ü"])


def nullable(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


selectors = st.fixed_dictionaries(
    {
        "tags": st.lists(texts, max_size=2),
        "tagsAny": st.lists(texts, max_size=2),
        "hosts": st.lists(host_names, max_size=2),
        "channel": nullable(texts),
        "all": st.booleans(),
    }
)
manifest_docs = st.fixed_dictionaries(
    {
        "schemaVersion": st.just(1),
        "displayName": texts,
        "channel": texts,
        "channelRef": texts,
        "fleetResolvedHash": st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
        "hostSet": st.lists(
            st.fixed_dictionaries(
                {"hostname": host_names, "waveIndex": small, "targetClosure": texts}
            ),
            max_size=4,
        ),
        "healthGate": st.dictionaries(texts, st.integers(0, 5) | st.booleans(), max_size=2),
        "complianceFrameworks": st.lists(texts, max_size=3),
        "disruptionBudgets": st.lists(
            st.fixed_dictionaries(
                {"selector": selectors, "hosts": st.lists(host_names, max_size=3)},
                optional={"maxInFlight": nullable(small), "maxInFlightPct": nullable(small)},
            ),
            max_size=2,
        ),
        "meta": st.fixed_dictionaries(
            {
                "schemaVersion": st.just(1),
                "signedAt": nullable(st.just(SIGNED_AT)),
                "ciCommit": nullable(texts),
            },
            optional={"signatureAlgorithm": nullable(st.sampled_from(["ed25519", "ecdsa-p256"]))},
        ),
    }
)


@settings(deadline=None)
@given(manifest_docs)
def test_manifest_round_trip_is_lossless(doc: dict[str, Any]) -> None:
    m = mf.parse_manifest(copy.deepcopy(doc))
    assert canonical_bytes(mf.dump_manifest(m)) == canonical_bytes(doc)
    assert mf.rollout_id(m) == hashlib.sha256(canonical_bytes(doc)).hexdigest()
    assert mf.parse_manifest(mf.dump_manifest(m)) == m


# --- projection over generated fleets -------------------------------------------

CHANNELS = ["stable", "edge"]


@st.composite
def fleet_docs(draw: st.DrawFn) -> dict[str, Any]:
    hostnames = draw(st.lists(st.sampled_from(["h1", "h2", "h3", "web-1", "Z", "ü"]), unique=True))
    hosts = {}
    for name in hostnames:
        host: dict[str, Any] = {
            "system": "x86_64-linux",
            "tags": draw(st.lists(st.sampled_from(["web", "db"]), max_size=2)),
            "channel": draw(st.sampled_from(CHANNELS)),
        }
        closure = draw(st.none() | st.just("absent") | st.sampled_from([C1, C2, C3]))
        if closure != "absent":
            host["closureHash"] = closure
        hosts[name] = host
    pool = [*hostnames, "ghost"]
    return {
        "schemaVersion": 1,
        "hosts": hosts,
        "channels": {ch: _channel(draw(st.sampled_from(["p1", "p2"])), [ch]) for ch in CHANNELS},
        "rolloutPolicies": {
            "p1": {
                "strategy": "staged",
                "waves": [],
                "healthGate": {"complianceProbes": {"required": True}},
                "onHealthFailure": "halt",
            }
        },
        "waves": {
            ch: [
                {"hosts": draw(st.lists(st.sampled_from(pool), max_size=3)), "soakMinutes": 1}
                for _ in range(draw(st.integers(0, 3)))
            ]
            for ch in CHANNELS
        },
        "disruptionBudgets": [
            {
                "selector": _selector(
                    tags=draw(st.lists(st.sampled_from(["web", "db"]), max_size=1)),
                    hosts=draw(st.lists(st.sampled_from(pool), max_size=2)),
                ),
                "maxInFlight": draw(small),
            }
            for _ in range(draw(st.integers(0, 2)))
        ],
        "meta": {
            "schemaVersion": 1,
            "signedAt": SIGNED_AT,
            "ciCommit": draw(nullable(st.just(COMMIT))),
        },
    }


@settings(deadline=None)
@given(fleet_docs())
def test_projection_properties(doc: dict[str, Any]) -> None:
    fleet = parse_fleet(doc)
    manifests = mf.project_manifests(fleet, canonical_bytes(doc))
    with_closure = {h.channel for h in fleet.hosts.values() if h.closure_hash is not None}
    assert set(manifests) == with_closure
    for ch, m in manifests.items():
        names = [e.hostname for e in m.host_set]
        assert names == sorted(names)
        assert set(names) == {
            n for n in fleet.hosts_on(ch) if fleet.hosts[n].closure_hash is not None
        }
        for e in m.host_set:
            assert e.target_closure == fleet.hosts[e.hostname].closure_hash
            assert e.wave_index == (fleet.wave_index(e.hostname) or 0)
            assert mf.manifest_lists_host(m, e.hostname, e.wave_index)
        for b in m.disruption_budgets:
            assert list(b.hosts) == sorted(b.hosts)
            assert set(b.hosts) <= set(fleet.hosts)
        assert m.fleet_resolved_hash == hashlib.sha256(canonical_bytes(doc)).hexdigest()
        assert m.meta.signature_algorithm == "ed25519"
        again = mf.project_manifests(parse_fleet(copy.deepcopy(doc)), canonical_bytes(doc))[ch]
        assert mf.rollout_id(again) == mf.rollout_id(m)
        assert mf.parse_manifest(mf.dump_manifest(m)) == m


# --- errors ----------------------------------------------------------------------

DOC = mf.dump_manifest(_project(FLEET)["stable"])


@pytest.mark.parametrize(
    ("key_path", "value", "field"),
    [
        (["displayName"], None, "displayName"),
        (["schemaVersion"], "1", "schemaVersion"),
        (["hostSet", 1, "waveIndex"], "0", "hostSet[1].waveIndex"),
        (["hostSet", 0, "targetClosure"], 7, "hostSet[0].targetClosure"),
        (["healthGate"], [], "healthGate"),
        (["complianceFrameworks", 0], 1, "complianceFrameworks[0]"),
        (["disruptionBudgets", 1, "hosts"], "e1", "disruptionBudgets[1].hosts"),
        (["disruptionBudgets", 0, "selector", "all"], 1, "disruptionBudgets[0].selector.all"),
        (["meta", "ciCommit"], 1, "meta.ciCommit"),
    ],
)
def test_bad_field_names_source_and_path(key_path: list[Any], value: Any, field: str) -> None:
    bad = copy.deepcopy(DOC)
    node: Any = bad
    for k in key_path[:-1]:
        node = node[k]
    node[key_path[-1]] = value
    with pytest.raises(ParseError) as err:
        mf.parse_manifest(bad, source="rollouts/x.json")
    assert err.value.source == "rollouts/x.json"
    assert err.value.field == field
    assert str(err.value).startswith(f"rollouts/x.json: {field}: ")


def test_missing_required_key() -> None:
    bad = {k: v for k, v in DOC.items() if k != "fleetResolvedHash"}
    with pytest.raises(ParseError, match=r"^rollout manifest: fleetResolvedHash: missing$"):
        mf.parse_manifest(bad)
