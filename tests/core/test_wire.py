"""Wire bodies (protocol §1.3), the report catalogue and signed payloads (§2.7)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixfleet.core import wire
from nixfleet.core.canonical import canonical_bytes
from nixfleet.core.closure import NIX_BASE32, ClosureHash
from nixfleet.core.errors import ParseError
from nixfleet.core.timeutil import format_instant

CLOSURE = "0123456789abcdfghijklmnpqrsvwxyz-nixos-system-h1-26.05"
ROLLOUT = "ab" * 32

# --- strategies ----------------------------------------------------------------

texts = st.text(max_size=12)
# Identifier fields draw from their grammars (core/idents.py, core/closure.py).
idents = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp", "Zs")), max_size=12)
hostnames = st.from_regex(r"[a-z0-9_]([a-z0-9_-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,5})?", fullmatch=True)
closures = st.builds(
    "{}-{}".format,
    st.text(NIX_BASE32, min_size=32, max_size=32),
    st.from_regex(r"[A-Za-z0-9+\-._?=]{1,20}", fullmatch=True),
)
rollout_ids = st.text("0123456789abcdef", min_size=64, max_size=64)
ints = st.integers(min_value=-(2**31), max_value=2**31)
naturals = st.integers(min_value=0, max_value=2**31)


@st.composite
def instants(draw: st.DrawFn) -> str:
    """Valid RFC 3339 / SQLite instants in the spellings peers actually send."""
    moment = draw(
        st.datetimes(
            min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
        )
    )
    style = draw(st.sampled_from(["z", "offset0", "nanos", "space", "offset2", "millis"]))
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if style == "z":
        return format_instant(moment)
    if style == "offset0":
        return base + f".{moment.microsecond:06d}+00:00"
    if style == "nanos":
        return base + f".{moment.microsecond:06d}{draw(st.integers(0, 999)):03d}Z"
    if style == "space":
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    if style == "millis":
        return base + f".{moment.microsecond // 1000:03d}Z"
    shifted = moment + timedelta(hours=2)
    return shifted.strftime("%Y-%m-%dT%H:%M:%S") + "+02:00"


def nullable(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


json_values = st.recursive(
    st.none() | st.booleans() | ints | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(texts, json_values, max_size=4)

generations = st.fixed_dictionaries(
    {"closureHash": closures, "bootId": idents}, optional={"channelRef": nullable(idents)}
)
probes = st.fixed_dictionaries(
    {
        "name": idents,
        "kind": st.sampled_from(wire.PROBE_KINDS),
        "status": st.sampled_from(wire.PROBE_STATUSES),
    },
    optional={
        "lastRunAt": nullable(instants()),
        "lastPassAt": nullable(instants()),
        "failureReason": nullable(idents),
    },
)
targets = st.fixed_dictionaries(
    {
        "closureHash": closures,
        "channelRef": idents,
        "evaluatedAt": instants(),
        "rolloutId": rollout_ids,
        "signedAt": instants(),
        "freshnessWindowSecs": naturals,
    },
    optional={
        "waveIndex": nullable(naturals),
        "activate": nullable(
            st.fixed_dictionaries({"confirmWindowSecs": naturals, "confirmEndpoint": idents})
        ),
        "complianceMode": nullable(st.sampled_from(["enforce", "permissive", "auto", ""])),
    },
)
checkin_requests = st.fixed_dictionaries(
    {"hostname": hostnames, "agentVersion": idents, "currentGeneration": generations},
    optional={
        "pendingGeneration": nullable(st.fixed_dictionaries({"closureHash": closures})),
        "lastEvaluatedTarget": nullable(targets),
        "lastFetchOutcome": nullable(
            st.fixed_dictionaries(
                {"result": st.sampled_from(wire.FETCH_RESULTS)},
                optional={"error": nullable(idents), "rolloutId": nullable(rollout_ids)},
            )
        ),
        "uptimeSecs": nullable(naturals),
        "lastConfirmedAt": nullable(instants()),
        "attestationSignature": nullable(idents),
        "healthProbes": st.lists(probes, max_size=3),
        "healthCheckMode": nullable(st.sampled_from(wire.HEALTH_CHECK_MODES)),
        "sentAt": nullable(instants()),
    },
)
checkin_responses = st.fixed_dictionaries(
    {"nextCheckinSecs": naturals},
    optional={
        "target": nullable(targets),
        "rollback": nullable(
            st.fixed_dictionaries({"rollout": idents, "targetRef": idents, "reason": idents})
        ),
    },
)
confirm_requests = st.fixed_dictionaries(
    {"hostname": hostnames, "rollout": rollout_ids, "wave": naturals, "generation": generations}
)
report_requests = st.fixed_dictionaries(
    {
        "hostname": hostnames,
        "agentVersion": idents,
        "occurredAt": instants(),
        "event": st.sampled_from(sorted(wire.REPORT_EVENTS)),
        "details": json_objects,
    },
    optional={"rollout": nullable(idents), "signature": nullable(idents)},
)
tokens = st.fixed_dictionaries(
    {
        "version": st.just(1),
        "claims": st.fixed_dictionaries(
            {
                "hostname": texts,
                "expectedPubkeyFingerprint": texts,
                "issuedAt": instants(),
                "expiresAt": instants(),
                "nonce": texts,
            }
        ),
        "signature": texts,
    }
)
enroll_requests = st.fixed_dictionaries({"token": tokens, "csrPem": texts})
renew_requests = st.fixed_dictionaries({"csrPem": texts})
cert_responses = st.fixed_dictionaries({"certPem": texts, "notAfter": instants()})
bootstrap_requests = st.fixed_dictionaries(
    {
        "token": tokens,
        "agentVersion": idents,
        "occurredAt": instants(),
        "event": st.fixed_dictionaries(
            {"event": st.sampled_from(wire.BOOTSTRAP_EVENTS), "details": json_objects}
        ),
    }
)
pins = st.fixed_dictionaries(
    {"commit": texts, "reason": texts}, optional={"expiresAt": nullable(texts)}
)
host_statuses = st.fixed_dictionaries(
    {
        "hostname": hostnames,
        "channel": nullable(idents),
        "declaredClosureHash": nullable(closures),
        "currentClosureHash": nullable(closures),
        "pendingClosureHash": nullable(closures),
        "lastCheckinAt": nullable(instants()),
        "lastRolloutId": nullable(rollout_ids),
        "converged": st.booleans(),
        "outstandingComplianceFailures": naturals,
        "outstandingRuntimeGateErrors": naturals,
        "verifiedEventCount": naturals,
        "lastUptimeSecs": nullable(naturals),
        "rolloutState": nullable(st.sampled_from(["Healthy", "Failed", "Converged"])),
        "pendingReboot": st.booleans(),
        "quarantinedClosure": nullable(closures),
        "pin": nullable(pins),
        "outstandingHealthFailures": naturals,
        "clockSkewSecs": nullable(ints),
    }
)
report_accepted = st.fixed_dictionaries({"eventId": texts})

Parse = Callable[..., Any]
Dump = Callable[[Any], dict[str, Any]]

BODIES: list[tuple[str, Parse, Dump, st.SearchStrategy[Any]]] = [
    ("checkin", wire.parse_checkin_request, wire.dump_checkin_request, checkin_requests),
    ("checkin-reply", wire.parse_checkin_response, wire.dump_checkin_response, checkin_responses),
    ("target", wire.parse_evaluated_target, wire.dump_evaluated_target, targets),
    ("generation", wire.parse_generation_ref, wire.dump_generation_ref, generations),
    ("probe", wire.parse_health_probe, wire.dump_health_probe, probes),
    ("confirm", wire.parse_confirm_request, wire.dump_confirm_request, confirm_requests),
    ("report", wire.parse_report_request, wire.dump_report_request, report_requests),
    ("report-accepted", wire.parse_report_accepted, wire.dump_report_accepted, report_accepted),
    ("enroll", wire.parse_enroll_request, wire.dump_enroll_request, enroll_requests),
    ("renew", wire.parse_renew_request, wire.dump_renew_request, renew_requests),
    ("enroll-reply", wire.parse_enroll_response, wire.dump_enroll_response, cert_responses),
    ("renew-reply", wire.parse_renew_response, wire.dump_renew_response, cert_responses),
    (
        "bootstrap-report",
        wire.parse_bootstrap_event_request,
        wire.dump_bootstrap_event_request,
        bootstrap_requests,
    ),
    ("host-status", wire.parse_host_status_entry, wire.dump_host_status_entry, host_statuses),
]


BODY_PARAMS = pytest.mark.parametrize(
    ("parse", "dump", "docs"), [b[1:] for b in BODIES], ids=[b[0] for b in BODIES]
)


@BODY_PARAMS
@settings(deadline=None, max_examples=60)
@given(data=st.data())
def test_round_trip_is_lossless(parse: Parse, dump: Dump, docs: Any, data: st.DataObject) -> None:
    doc = data.draw(docs)
    record = parse(copy.deepcopy(doc))
    assert canonical_bytes(dump(record)) == canonical_bytes(doc)
    # and the dumped form parses back to an equal record
    assert parse(dump(record)) == record


@BODY_PARAMS
@settings(deadline=None, max_examples=20)
@given(data=st.data())
def test_unknown_fields_are_ignored(
    parse: Parse, dump: Dump, docs: Any, data: st.DataObject
) -> None:
    doc = data.draw(docs)
    extended = {**doc, "someFutureField": {"x": [1, 2]}}
    assert canonical_bytes(dump(parse(extended))) == canonical_bytes(doc)


# --- fixtures for the error tests ------------------------------------------------

GEN = {"closureHash": CLOSURE, "channelRef": ROLLOUT, "bootId": "boot-1"}
TARGET = {
    "closureHash": CLOSURE,
    "channelRef": ROLLOUT,
    "evaluatedAt": "2026-04-24T10:00:00Z",
    "rolloutId": ROLLOUT,
    "waveIndex": 0,
    "activate": {"confirmWindowSecs": 360, "confirmEndpoint": "/v1/agent/confirm"},
    "signedAt": "2026-04-24T09:59:00.123456789Z",
    "freshnessWindowSecs": 86400,
    "complianceMode": "permissive",
}
PROBE = {"name": "web", "kind": "http", "status": "pass", "lastRunAt": "2026-04-24T10:00:00Z"}
CHECKIN = {
    "hostname": "h1",
    "agentVersion": "0.1.0",
    "currentGeneration": GEN,
    "pendingGeneration": {"closureHash": CLOSURE},
    "lastEvaluatedTarget": TARGET,
    "lastFetchOutcome": {"result": "ok", "rolloutId": ROLLOUT},
    "uptimeSecs": 12,
    "lastConfirmedAt": "2026-04-24T10:01:00.5Z",
    "attestationSignature": "c2ln",
    "healthProbes": [PROBE],
    "healthCheckMode": "enforce",
    "sentAt": "2026-04-24T10:01:02.25Z",
}
CHECKIN_REPLY = {
    "target": TARGET,
    "rollback": {"rollout": ROLLOUT, "targetRef": ROLLOUT, "reason": "policy"},
    "nextCheckinSecs": 60,
}
CONFIRM = {"hostname": "h1", "rollout": ROLLOUT, "wave": 0, "generation": GEN}
REPORT = {
    "hostname": "h1",
    "agentVersion": "0.1.0",
    "occurredAt": "2026-04-24T10:02:00Z",
    "rollout": ROLLOUT,
    "event": "activation-failed",
    "details": {"phase": "nix-env-set", "exit_code": 1, "stderr_tail": "boom"},
    "signature": "c2ln",
}
TOKEN = {"version": 1, "claims": {"hostname": "h1", "nonce": "00" * 16}, "signature": "c2ln"}
ENROLL = {"token": TOKEN, "csrPem": "-----BEGIN CERTIFICATE REQUEST-----"}
CERT = {"certPem": "-----BEGIN CERTIFICATE-----", "notAfter": "2026-05-24T10:00:00Z"}
BOOTSTRAP = {
    "token": TOKEN,
    "agentVersion": "0.1.0",
    "occurredAt": "2026-04-24T10:00:00Z",
    "event": {"event": "trust-error", "details": {"reason": "bad trust file"}},
}
HOST_STATUS = {
    "hostname": "h1",
    "channel": "stable",
    "declaredClosureHash": CLOSURE,
    "currentClosureHash": CLOSURE,
    "pendingClosureHash": None,
    "lastCheckinAt": "2026-04-24T10:00:00Z",
    "lastRolloutId": ROLLOUT,
    "converged": True,
    "outstandingComplianceFailures": 0,
    "outstandingRuntimeGateErrors": 0,
    "verifiedEventCount": 3,
    "lastUptimeSecs": 12,
    "rolloutState": "Healthy",
    "pendingReboot": False,
    "quarantinedClosure": None,
    "pin": {"commit": "abc", "reason": "freeze"},
    "outstandingHealthFailures": 0,
    "clockSkewSecs": -600,
}


def _mutate(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy with `path` (dotted, `[i]` for indexes) set to `value` or deleted."""
    out = copy.deepcopy(doc)
    parts = path.replace("[", ".[").split(".")
    node: Any = out
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    last = parts[-1]
    key: Any = int(last[1:-1]) if last.startswith("[") else last
    if value is _DELETE:
        del node[key]
    else:
        node[key] = value
    return out


_DELETE = object()

BAD_CASES: list[tuple[str, Parse, dict[str, Any], str, Any]] = [
    ("checkin missing hostname", wire.parse_checkin_request, CHECKIN, "hostname", _DELETE),
    ("checkin boot id", wire.parse_checkin_request, CHECKIN, "currentGeneration.bootId", 7),
    ("checkin fetch result", wire.parse_checkin_request, CHECKIN, "lastFetchOutcome.result", "meh"),
    ("checkin probe kind", wire.parse_checkin_request, CHECKIN, "healthProbes[0].kind", "udp"),
    ("checkin probe time", wire.parse_checkin_request, CHECKIN, "healthProbes[0].lastRunAt", "x"),
    ("checkin confirmed at", wire.parse_checkin_request, CHECKIN, "lastConfirmedAt", "yesterday"),
    ("checkin target", wire.parse_checkin_request, CHECKIN, "lastEvaluatedTarget.signedAt", None),
    ("checkin mode", wire.parse_checkin_request, CHECKIN, "healthCheckMode", "auto"),
    ("checkin uptime", wire.parse_checkin_request, CHECKIN, "uptimeSecs", "12"),
    ("reply next", wire.parse_checkin_response, CHECKIN_REPLY, "nextCheckinSecs", _DELETE),
    ("reply rollback", wire.parse_checkin_response, CHECKIN_REPLY, "rollback.targetRef", 1),
    ("target window", wire.parse_evaluated_target, TARGET, "freshnessWindowSecs", True),
    ("target activate", wire.parse_evaluated_target, TARGET, "activate.confirmWindowSecs", "x"),
    ("generation", wire.parse_generation_ref, GEN, "closureHash", _DELETE),
    ("probe status", wire.parse_health_probe, PROBE, "status", "ok"),
    ("confirm wave", wire.parse_confirm_request, CONFIRM, "wave", "0"),
    ("confirm gen", wire.parse_confirm_request, CONFIRM, "generation.closureHash", None),
    ("report details", wire.parse_report_request, REPORT, "details", []),
    ("report occurred", wire.parse_report_request, REPORT, "occurredAt", _DELETE),
    ("report accepted", wire.parse_report_accepted, {"eventId": "e"}, "eventId", 3),
    ("enroll token", wire.parse_enroll_request, ENROLL, "token", "abc"),
    ("renew csr", wire.parse_renew_request, {"csrPem": "x"}, "csrPem", _DELETE),
    ("enroll reply", wire.parse_enroll_response, CERT, "notAfter", "soon"),
    ("renew reply", wire.parse_renew_response, CERT, "certPem", None),
    ("bootstrap event", wire.parse_bootstrap_event_request, BOOTSTRAP, "event.details", _DELETE),
    ("host status pin", wire.parse_host_status_entry, HOST_STATUS, "pin", _DELETE),
    ("host status pin commit", wire.parse_host_status_entry, HOST_STATUS, "pin.commit", 1),
    ("host status flag", wire.parse_host_status_entry, HOST_STATUS, "converged", "yes"),
]


@pytest.mark.parametrize(
    ("parse", "doc", "path", "value"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_field_names_source_and_path(
    parse: Parse, doc: dict[str, Any], path: str, value: Any
) -> None:
    parse(doc)  # the fixture itself is valid
    with pytest.raises(ParseError) as err:
        parse(_mutate(doc, path, value), source="SRC")
    assert err.value.source == "SRC"
    assert err.value.field == path
    assert str(err.value).startswith(f"SRC: {path}: ")


def test_fixtures_round_trip() -> None:
    for parse, dump, doc in [
        (wire.parse_checkin_request, wire.dump_checkin_request, CHECKIN),
        (wire.parse_checkin_response, wire.dump_checkin_response, CHECKIN_REPLY),
        (wire.parse_confirm_request, wire.dump_confirm_request, CONFIRM),
        (wire.parse_report_request, wire.dump_report_request, REPORT),
        (wire.parse_enroll_request, wire.dump_enroll_request, ENROLL),
        (wire.parse_enroll_response, wire.dump_enroll_response, CERT),
        (wire.parse_bootstrap_event_request, wire.dump_bootstrap_event_request, BOOTSTRAP),
        (wire.parse_host_status_entry, wire.dump_host_status_entry, HOST_STATUS),
    ]:
        assert dump(parse(doc)) == doc


def test_root_must_be_an_object() -> None:
    with pytest.raises(ParseError, match=r"^checkin body: expected a JSON object, got an array$"):
        wire.parse_checkin_request([])


# --- records -------------------------------------------------------------------


def test_checkin_parses_typed_values() -> None:
    req = wire.parse_checkin_request(CHECKIN)
    assert req.current_generation == wire.GenerationRef(
        closure_hash=ClosureHash(CLOSURE), channel_ref=ROLLOUT, boot_id="boot-1"
    )
    assert req.last_confirmed_at == datetime(2026, 4, 24, 10, 1, 0, 500000, tzinfo=UTC)
    assert req.last_confirmed_at_text == "2026-04-24T10:01:00.5Z"
    target = req.last_evaluated_target
    assert target is not None
    assert target.signed_at == datetime(2026, 4, 24, 9, 59, 0, 123456, tzinfo=UTC)
    assert target.signed_at_text == "2026-04-24T09:59:00.123456789Z"
    assert target.activate == wire.Activate()
    assert req.health_probes[0].status == wire.PROBE_PASS


def test_minimal_bodies_parse_with_absent_and_null_optionals() -> None:
    minimal = {"hostname": "h1", "agentVersion": "v", "currentGeneration": GEN}
    nulls = {**minimal, "pendingGeneration": None, "lastFetchOutcome": None, "healthProbes": None}
    a = wire.parse_checkin_request(minimal)
    b = wire.parse_checkin_request(nulls)
    assert a == b
    assert a.health_probes == ()
    assert wire.dump_checkin_request(a) == minimal
    assert wire.dump_checkin_request(b)["pendingGeneration"] is None
    assert wire.parse_checkin_response({"nextCheckinSecs": 60}) == wire.CheckinResponse()


def test_records_built_in_code_dump_nulls_and_parse_back() -> None:
    now = datetime(2026, 4, 24, 10, 0, tzinfo=UTC)
    reply = wire.CheckinResponse(
        target=wire.EvaluatedTarget(
            closure_hash=ClosureHash(CLOSURE),
            channel_ref=ROLLOUT,
            evaluated_at=now,
            rollout_id=ROLLOUT,
            signed_at=now,
            signed_at_text="2026-04-24T10:00:00.000000000Z",
            freshness_window_secs=3600,
            activate=wire.Activate(),
        )
    )
    out = wire.dump_checkin_response(reply)
    assert out["nextCheckinSecs"] == 60
    assert out["rollback"] is None
    assert out["target"]["signedAt"] == "2026-04-24T10:00:00.000000000Z"
    assert out["target"]["evaluatedAt"] == "2026-04-24T10:00:00Z"
    assert out["target"]["waveIndex"] is None
    assert out["target"]["activate"] == {
        "confirmWindowSecs": 360,
        "confirmEndpoint": "/v1/agent/confirm",
    }
    assert wire.parse_checkin_response(out) == reply


def test_signed_at_text_must_denote_signed_at() -> None:
    now = datetime(2026, 4, 24, 10, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="signedAt"):
        wire.EvaluatedTarget(
            closure_hash=ClosureHash(CLOSURE),
            channel_ref=ROLLOUT,
            evaluated_at=now,
            rollout_id=ROLLOUT,
            signed_at=now,
            signed_at_text="2026-04-24T10:00:01Z",
            freshness_window_secs=1,
        )
    with pytest.raises(ValueError, match="lastConfirmedAt"):
        wire.CheckinRequest(
            hostname="h1",
            agent_version="v",
            current_generation=wire.parse_generation_ref(GEN),
            last_confirmed_at_text="2026-04-24T10:00:01Z",
        )


def test_changed_instant_is_emitted_canonically() -> None:
    rep = wire.parse_report_request({**REPORT, "occurredAt": "2026-04-24T12:02:00+02:00"})
    assert wire.dump_report_request(rep)["occurredAt"] == "2026-04-24T12:02:00+02:00"
    later = dataclasses.replace(rep, occurred_at=rep.occurred_at + timedelta(seconds=1))
    assert wire.dump_report_request(later)["occurredAt"] == "2026-04-24T10:02:01Z"


def test_instants_compare_by_value_not_spelling() -> None:
    a = wire.parse_cert_issued({**CERT, "notAfter": "2026-05-24T10:00:00Z"})
    b = wire.parse_cert_issued({**CERT, "notAfter": "2026-05-24 10:00:00"})
    assert a == b
    assert wire.dump_cert_issued(b)["notAfter"] == "2026-05-24 10:00:00"


def test_host_status_emits_every_key() -> None:
    entry = wire.HostStatusEntry(hostname="h9")
    out = wire.dump_host_status_entry(entry)
    assert set(out) == set(HOST_STATUS)
    assert out["pin"] is None and out["lastCheckinAt"] is None
    assert wire.parse_host_status_entry(out) == entry


def test_enroll_keeps_the_token_raw() -> None:
    req = wire.parse_enroll_request(ENROLL)
    assert req.token == TOKEN
    assert wire.EnrollResponse is wire.RenewResponse is wire.CertIssued


# --- report catalogue and signed payloads ---------------------------------------

SIGNED = {
    "activation-failed",
    "realise-failed",
    "verify-mismatch",
    "rollback-triggered",
    "closure-signature-mismatch",
    "stale-target",
    "compliance-failure",
    "manifest-missing",
    "manifest-verify-failed",
    "manifest-mismatch",
    "runtime-gate-error",
}
UNSIGNED = {
    "activation-started",
    "activation-deferred",
    "closure-quarantined",
    "enrollment-failed",
    "renewal-failed",
    "trust-error",
    "other",
}


def test_catalogue_matches_protocol_table() -> None:
    assert set(wire.REPORT_EVENTS) == SIGNED | UNSIGNED
    assert {e for e in wire.REPORT_EVENTS if wire.is_signed_event(e)} == SIGNED
    assert not wire.is_signed_event("no-such-event")
    assert wire.REPORT_EVENTS["activation-failed"].required == ("phase",)
    assert wire.REPORT_EVENTS["activation-failed"].optional == ("exit_code", "stderr_tail")
    assert wire.REPORT_EVENTS["activation-deferred"].fields == (
        "closure_hash",
        "channel_ref",
        "component",
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_evidence_payload_activation_failed() -> None:
    rep = wire.parse_report_request(REPORT)
    payload = wire.report_evidence_payload(rep)
    assert payload == (
        b'{"exitCode":1,"hostname":"h1","phase":"nix-env-set","rollout":"'
        + ROLLOUT.encode()
        + b'","stderrTailSha256":"'
        + _sha(b'"boom"').encode()
        + b'"}'
    )


def test_evidence_payload_absent_optionals_are_null_and_tail_hashes_empty() -> None:
    payload = wire.evidence_payload(
        hostname="h1", rollout=None, event="activation-failed", details={"phase": "p"}
    )
    assert payload == (
        b'{"exitCode":null,"hostname":"h1","phase":"p","rollout":null,"stderrTailSha256":"'
        + _sha(b'""').encode()
        + b'"}'
    )


def test_evidence_payload_snippet_hash_and_absent_snippet() -> None:
    details = {
        "control_id": "c-1",
        "status": "non-compliant",
        "framework_articles": ["nis2:21"],
        "evidence_collected_at": "2026-04-24T10:00:00.123456789Z",
        "evidence_snippet": 'line "1"\n',
        "extra_key": "not covered",
    }
    payload = canonical_bytes(
        {
            "hostname": "h1",
            "rollout": ROLLOUT,
            "controlId": "c-1",
            "status": "non-compliant",
            "frameworkArticles": ["nis2:21"],
            "evidenceCollectedAt": "2026-04-24T10:00:00.123456789Z",
            "evidenceSnippetSha256": _sha(b'"line \\"1\\"\\n"'),
        }
    )
    assert (
        wire.evidence_payload(
            hostname="h1", rollout=ROLLOUT, event="compliance-failure", details=details
        )
        == payload
    )
    without = {k: v for k, v in details.items() if k != "evidence_snippet"}
    assert b'"evidenceSnippetSha256":""' in wire.evidence_payload(
        hostname="h1", rollout=ROLLOUT, event="compliance-failure", details=without
    )


def test_evidence_payload_stale_target_camel_cases_every_field() -> None:
    details = {
        "closure_hash": CLOSURE,
        "channel_ref": ROLLOUT,
        "signed_at": "2026-04-24T09:00:00Z",
        "freshness_window_secs": 60,
        "age_secs": 3600,
    }
    payload = wire.evidence_payload(
        hostname="h1", rollout=ROLLOUT, event="stale-target", details=details
    )
    assert payload == canonical_bytes(
        {
            "hostname": "h1",
            "rollout": ROLLOUT,
            "closureHash": CLOSURE,
            "channelRef": ROLLOUT,
            "signedAt": "2026-04-24T09:00:00Z",
            "freshnessWindowSecs": 60,
            "ageSecs": 3600,
        }
    )


def test_evidence_payload_refuses_unknown_events() -> None:
    with pytest.raises(ParseError, match="event: unknown report event 'bogus'"):
        wire.evidence_payload(hostname="h1", rollout=None, event="bogus", details={})


def test_check_details() -> None:
    wire.check_details("activation-failed", {"phase": "x", "exit_code": None})
    wire.check_details(
        "compliance-failure",
        {
            "control_id": "c",
            "status": "s",
            "framework_articles": [],
            "evidence_collected_at": "t",
        },
    )
    with pytest.raises(ParseError) as err:
        wire.check_details("activation-failed", {"exit_code": 1})
    assert err.value.field == "details.phase"
    with pytest.raises(ParseError) as err:
        wire.check_details("activation-failed", {"phase": "x", "exit_code": "1"})
    assert err.value.field == "details.exit_code"
    with pytest.raises(ParseError) as err:
        wire.check_details(
            "compliance-failure",
            {
                "control_id": "c",
                "status": "s",
                "framework_articles": [1],
                "evidence_collected_at": "t",
            },
        )
    assert err.value.field == "details.framework_articles"


def test_attestation_payload_bytes() -> None:
    assert wire.attestation_payload(
        hostname="h1", rollout_id=ROLLOUT, last_confirmed_at="2026-04-24T10:01:00.5Z"
    ) == (
        b'{"hostname":"h1","lastConfirmedAt":"2026-04-24T10:01:00.5Z","rolloutId":"'
        + ROLLOUT.encode()
        + b'"}'
    )
    req = wire.parse_checkin_request(CHECKIN)
    assert req.last_confirmed_at_wire == "2026-04-24T10:01:00.5Z"


def test_snake_to_camel() -> None:
    assert wire.snake_to_camel("collector_exit_code") == "collectorExitCode"
    assert wire.snake_to_camel("reason") == "reason"


def _report_body(**over: object) -> dict[str, object]:
    body: dict[str, object] = {
        "hostname": "h1",
        "agentVersion": "0.1.0",
        "occurredAt": "2026-04-24T10:00:00Z",
        "rollout": None,
        "event": "other",
        "details": {"kind": "k"},
    }
    body.update(over)
    return body


def test_reports_are_bounded() -> None:
    """Issue 9 #10: only catalogued events, and `details` of bounded size."""
    assert wire.parse_report_request(_report_body()).event == "other"
    with pytest.raises(ParseError, match="unknown report event"):
        wire.parse_report_request(_report_body(event="made-up"))
    big = {"kind": "k", "detail": "x" * wire.MAX_REPORT_DETAILS_BYTES}
    with pytest.raises(ParseError, match="details"):
        wire.parse_report_request(_report_body(details=big))
