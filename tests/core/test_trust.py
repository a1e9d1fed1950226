"""trust.json parsing, lossless dumping and keys in force (protocol §2.4)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from nixfleet.core.errors import ParseError
from nixfleet.core.trust import (
    KeyInForce,
    Slot,
    TrustKey,
    dump_trust,
    keys_at,
    keys_in_force,
    parse_trust,
    successor_due,
)

ED_A = TrustKey(algorithm="ed25519", public="A" * 43 + "=")
ED_B = TrustKey(algorithm="ed25519", public="B" * 43 + "=")
P256_C = TrustKey(algorithm="ecdsa-p256", public="C" * 86 + "==")
FUTURE = TrustKey(algorithm="ml-dsa-65", public="ZZZZ")

FULL = {
    "schemaVersion": 1,
    "ciReleaseKey": {
        "current": {"algorithm": "ecdsa-p256", "public": P256_C.public},
        "previous": {"algorithm": "ed25519", "public": ED_A.public},
        "rejectBefore": "2025-01-01T00:00:00Z",
        "successor": {"algorithm": "ed25519", "public": ED_B.public},
        "retireAt": "2025-07-01T00:00:00.123456789Z",
    },
    "cacheKeys": ["cache.example.org-1:abcdef=="],
    "orgRootKey": {"current": {"algorithm": "ed25519", "public": ED_A.public}, "previous": None},
    "rootCAPem": "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n",
    "issuanceCAPems": [],
}

MINIMAL = {
    "schemaVersion": 1,
    "ciReleaseKey": {"current": {"algorithm": "ed25519", "public": ED_A.public}},
    "cacheKeys": [],
    "orgRootKey": None,
}


@pytest.mark.parametrize("doc", [FULL, MINIMAL], ids=["full", "minimal"])
def test_parse_dump_is_lossless(doc: dict[str, object]) -> None:
    dumped = dump_trust(parse_trust(doc))
    assert dumped == doc
    assert json.dumps(dumped, sort_keys=True) == json.dumps(doc, sort_keys=True)


def test_absent_optionals_stay_absent_and_nulls_stay_null() -> None:
    doc = {
        "schemaVersion": 1,
        "ciReleaseKey": {"current": None},
        "cacheKeys": [],
    }
    t = parse_trust(doc)
    assert t.org_root_key is None
    assert t.ci_release_key.current is None
    assert dump_trust(t) == doc  # no orgRootKey, rootCAPem or issuanceCAPems invented


def test_parsed_fields() -> None:
    t = parse_trust(FULL)
    assert t.ci_release_key.current == P256_C
    assert t.ci_release_key.previous == ED_A
    assert t.ci_release_key.successor == ED_B
    assert t.ci_release_key.reject_before_at == datetime(2025, 1, 1, tzinfo=UTC)
    assert t.ci_release_key.retire_at_at == datetime(2025, 7, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert t.cache_keys == ("cache.example.org-1:abcdef==",)
    assert t.org_root_key is not None and t.org_root_key.current == ED_A
    assert t.issuance_ca_pems == ()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schemaVersion=2), "trust.json: schemaVersion: unsupported version 2"),
        (lambda d: d.pop("ciReleaseKey"), "trust.json: ciReleaseKey: missing"),
        (lambda d: d["ciReleaseKey"].update(rejectBefore="yesterday"),
         "trust.json: ciReleaseKey.rejectBefore: not an RFC 3339 timestamp"),
        (lambda d: d["ciReleaseKey"]["current"].pop("public"),
         "trust.json: ciReleaseKey.current.public: missing"),
        (lambda d: d.update(cacheKeys=[1]), "trust.json: cacheKeys[0]: expected a string"),
        (lambda d: d["orgRootKey"].update(current="key"),
         "trust.json: orgRootKey.current: expected an object, got a string"),
    ],
    ids=["version", "no-ci-key", "bad-instant", "no-public", "cache-key-type", "key-type"],
)
def test_parse_errors_name_the_field(
    mutate: Callable[[dict[str, Any]], object], message: str
) -> None:
    doc = json.loads(json.dumps(FULL))
    mutate(doc)
    with pytest.raises(ParseError) as err:
        parse_trust(doc)
    assert str(err.value).startswith(message)


def _roles(keys: list[KeyInForce]) -> list[str]:
    return [k.role for k in keys]


def test_keys_in_force_order_and_successor_window() -> None:
    slot = parse_trust(FULL).ci_release_key
    before = datetime(2025, 6, 30, tzinfo=UTC)
    retire = datetime(2025, 7, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert _roles(keys_in_force(slot, before)) == ["current", "previous", "successor"]
    assert [k.key for k in keys_in_force(slot, before)] == [P256_C, ED_A, ED_B]
    assert _roles(keys_in_force(slot, retire)) == ["current", "previous"]  # now < retireAt only
    assert successor_due(slot, before) is False
    assert successor_due(slot, retire) is True


def test_successor_without_retire_at_is_not_in_force() -> None:
    slot = Slot(current=ED_A, successor=ED_B)
    assert _roles(keys_at(slot, datetime(2025, 1, 1, tzinfo=UTC))) == ["current"]


def test_unknown_algorithms_are_kept_but_not_in_force() -> None:
    doc = json.loads(json.dumps(MINIMAL))
    doc["ciReleaseKey"]["current"] = {"algorithm": FUTURE.algorithm, "public": FUTURE.public}
    doc["ciReleaseKey"]["previous"] = {"algorithm": "ed25519", "public": ED_B.public}
    t = parse_trust(doc)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert _roles(keys_at(t.ci_release_key, now)) == ["current", "previous"]
    assert keys_in_force(t.ci_release_key, now) == [KeyInForce(role="previous", key=ED_B)]
    assert dump_trust(t) == doc


def test_empty_slot_has_no_keys() -> None:
    assert keys_at(Slot(), datetime(2025, 1, 1, tzinfo=UTC)) == []
