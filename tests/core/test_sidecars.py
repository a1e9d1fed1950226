"""revocations.json and bootstrap-nonces.json (protocol §2.3)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixfleet.core import sidecars
from nixfleet.core.canonical import canonical_bytes
from nixfleet.core.errors import ParseError
from nixfleet.core.fleet import Meta
from nixfleet.core.timeutil import format_instant

texts = st.text(max_size=10)


@st.composite
def instants(draw: st.DrawFn) -> str:
    moment = draw(
        st.datetimes(
            min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
        )
    )
    style = draw(st.sampled_from(["z", "nanos", "offset0"]))
    if style == "z":
        return format_instant(moment)
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if style == "nanos":
        return base + f".{moment.microsecond:06d}{draw(st.integers(0, 999)):03d}Z"
    return base + "+00:00"


def nullable(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


metas = st.fixed_dictionaries(
    {"schemaVersion": st.just(1), "signedAt": nullable(instants()), "ciCommit": nullable(texts)},
    optional={"signatureAlgorithm": nullable(st.sampled_from(["ed25519", "ecdsa-p256"]))},
)
revocation_docs = st.fixed_dictionaries(
    {
        "schemaVersion": st.just(1),
        "revocations": st.lists(
            st.fixed_dictionaries(
                {"hostname": texts, "notBefore": instants()},
                optional={"reason": nullable(texts), "revokedBy": nullable(texts)},
            ),
            max_size=4,
        ),
        "meta": metas,
    }
)
nonce_docs = st.fixed_dictionaries(
    {
        "schemaVersion": st.just(1),
        "bootstrapNonces": st.lists(
            st.fixed_dictionaries(
                {"nonce": texts, "hostname": texts, "expiresAt": instants()},
                optional={"mintedAt": nullable(instants()), "mintedBy": nullable(texts)},
            ),
            max_size=4,
        ),
        "meta": metas,
    }
)


@settings(deadline=None)
@given(revocation_docs)
def test_revocations_round_trip(doc: dict[str, Any]) -> None:
    parsed = sidecars.parse_revocations(copy.deepcopy(doc))
    assert canonical_bytes(sidecars.dump_revocations(parsed)) == canonical_bytes(doc)
    assert sidecars.parse_revocations(sidecars.dump_revocations(parsed)) == parsed


@settings(deadline=None)
@given(nonce_docs)
def test_bootstrap_nonces_round_trip(doc: dict[str, Any]) -> None:
    parsed = sidecars.parse_bootstrap_nonces(copy.deepcopy(doc))
    assert canonical_bytes(sidecars.dump_bootstrap_nonces(parsed)) == canonical_bytes(doc)
    assert sidecars.parse_bootstrap_nonces(sidecars.dump_bootstrap_nonces(parsed)) == parsed


META = {"schemaVersion": 1, "signedAt": "2026-04-24T10:00:00Z", "ciCommit": "abcdef0123"}
REVOCATIONS = {
    "schemaVersion": 1,
    "revocations": [
        {"hostname": "h1", "notBefore": "2026-04-24T09:00:00Z", "reason": "compromised"},
        {"hostname": "h2", "notBefore": "2026-04-24T09:30:00.000000001Z", "revokedBy": "ops"},
    ],
    "meta": META,
}
NONCES = {
    "schemaVersion": 1,
    "bootstrapNonces": [
        {"nonce": "aa" * 16, "hostname": "h1", "expiresAt": "2026-04-25T10:00:00Z"},
        {
            "nonce": "bb" * 16,
            "hostname": "h2",
            "expiresAt": "2026-04-24T10:00:00Z",
            "mintedAt": "2026-04-23T10:00:00Z",
            "mintedBy": "alice",
        },
    ],
    "meta": {**META, "signatureAlgorithm": "ed25519"},
}


def test_revocations_parse_typed() -> None:
    doc = sidecars.parse_revocations(REVOCATIONS)
    assert doc.meta == Meta(
        schema_version=1, signed_at="2026-04-24T10:00:00Z", ci_commit="abcdef0123"
    )
    first, second = doc.revocations
    assert first == sidecars.Revocation(
        hostname="h1", not_before=datetime(2026, 4, 24, 9, 0, tzinfo=UTC), reason="compromised"
    )
    assert second.revoked_by == "ops" and second.reason is None
    assert sidecars.dump_revocations(doc) == REVOCATIONS
    assert set(sidecars.revocation_map(doc)) == {"h1", "h2"}


def test_empty_revocations_are_kept() -> None:
    doc = sidecars.parse_revocations({**REVOCATIONS, "revocations": []})
    assert doc.revocations == ()
    assert sidecars.dump_revocations(doc)["revocations"] == []


def test_nonce_liveness_is_inclusive() -> None:
    doc = sidecars.parse_bootstrap_nonces(NONCES)
    entry = doc.bootstrap_nonces[1]
    at = datetime(2026, 4, 24, 10, 0, tzinfo=UTC)
    assert sidecars.nonce_entry_live(entry, at - timedelta(seconds=1))
    assert sidecars.nonce_entry_live(entry, at)
    assert not sidecars.nonce_entry_live(entry, at + timedelta(microseconds=1))


def test_nonce_allowlist_and_prune() -> None:
    doc = sidecars.parse_bootstrap_nonces(NONCES)
    allow = sidecars.nonce_allowlist(doc)
    assert allow["aa" * 16].hostname == "h1"
    assert allow["bb" * 16].minted_at == datetime(2026, 4, 23, 10, 0, tzinfo=UTC)
    signed_at = datetime(2026, 4, 24, 12, 0, tzinfo=UTC)
    assert [e.nonce for e in sidecars.prune_nonces(doc.bootstrap_nonces, signed_at)] == ["aa" * 16]
    assert sidecars.dump_bootstrap_nonces(doc) == NONCES


@pytest.mark.parametrize(
    ("doc", "mutate", "field"),
    [
        (REVOCATIONS, lambda d: d["revocations"][1].pop("notBefore"), "revocations[1].notBefore"),
        (REVOCATIONS, lambda d: d["revocations"][0].update(hostname=7), "revocations[0].hostname"),
        (
            REVOCATIONS,
            lambda d: d["revocations"][0].update(notBefore="now"),
            "revocations[0].notBefore",
        ),
        (REVOCATIONS, lambda d: d.pop("revocations"), "revocations"),
        (REVOCATIONS, lambda d: d["meta"].update(signedAt=1), "meta.signedAt"),
        (NONCES, lambda d: d["bootstrapNonces"][0].pop("nonce"), "bootstrapNonces[0].nonce"),
        (
            NONCES,
            lambda d: d["bootstrapNonces"][1].update(mintedAt="x"),
            "bootstrapNonces[1].mintedAt",
        ),
        (NONCES, lambda d: d.update(schemaVersion="1"), "schemaVersion"),
        (NONCES, lambda d: d.pop("meta"), "meta"),
    ],
)
def test_bad_field_names_source_and_path(doc: dict[str, Any], mutate: Any, field: str) -> None:
    bad = copy.deepcopy(doc)
    mutate(bad)
    parse = sidecars.parse_revocations if "revocations" in doc else sidecars.parse_bootstrap_nonces
    with pytest.raises(ParseError) as err:
        parse(bad, source="releases/x.json")
    assert err.value.source == "releases/x.json"
    assert err.value.field == field
    assert str(err.value).startswith(f"releases/x.json: {field}: ")


def test_default_sources_name_the_files() -> None:
    with pytest.raises(ParseError, match=r"^revocations\.json: schemaVersion: missing$"):
        sidecars.parse_revocations({"revocations": [], "meta": META})
    with pytest.raises(ParseError, match=r"^bootstrap-nonces\.json: bootstrapNonces: missing$"):
        sidecars.parse_bootstrap_nonces({"schemaVersion": 1, "meta": META})
