"""An agent clock behind the manifest's signedAt (issue 9 #13): the refusal says so in
one line, is its own fetch outcome (`clock-skew`) that holds nothing at the CP, and the
CP sees each host's skew from the checkin's `sentAt`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleet_sim.fleetgen import ReleaseKit
from nixfleet.core import clockskew, wire
from nixfleet.core import dispatch as dec
from nixfleet.core.agent import Report, checkin_request, step
from nixfleet.core.agent_events import ManifestFailed, ManifestOk
from nixfleet.core.agent_state import AgentState, PendingTarget, Phase
from nixfleet.core.canonical import sha256_hex
from nixfleet.core.closure import ClosureHash
from nixfleet.core.manifest_check import check_manifest
from nixfleet.core.timeutil import format_instant
from nixfleet.core.trust import parse_trust

NOW = datetime(2026, 4, 24, 10, 0, tzinfo=UTC)
OLD = ClosureHash("1" * 32 + "-nixos-system-h1-1")
NEW = ClosureHash("2" * 32 + "-nixos-system-h1-2")


def manifest(kit: ReleaseKit, signed_at: datetime) -> tuple[str, bytes, bytes]:
    doc = {
        "schemaVersion": 1,
        "displayName": "stable@00000000",
        "channel": "stable",
        "channelRef": "0" * 40,
        "fleetResolvedHash": "0" * 64,
        "hostSet": [{"hostname": "h1", "waveIndex": 0, "targetClosure": NEW}],
        "healthGate": {},
        "complianceFrameworks": [],
        "disruptionBudgets": [],
        "meta": {
            "schemaVersion": 1,
            "signedAt": format_instant(signed_at),
            "ciCommit": "0" * 40,
            "signatureAlgorithm": "ed25519",
        },
    }
    raw, sig = kit.sign(doc)
    return sha256_hex(raw), raw, sig


@pytest.mark.parametrize(("behind", "refused"), [(600, True), (61, True), (60, False)])
def test_a_manifest_ahead_of_the_host_clock_is_a_clock_skew(behind: int, refused: bool) -> None:
    kit = ReleaseKit()
    rid, raw, sig = manifest(kit, NOW + timedelta(seconds=behind))
    result = check_manifest(
        raw, sig, parse_trust(kit.trust()), rollout_id=rid, hostname="h1", wave_index=0, now=NOW
    )
    if not refused:
        assert result == ManifestOk()  # within the ±60 s slack
        return
    signed = format_instant(NOW + timedelta(seconds=behind))
    assert result == ManifestFailed(
        kind="clock-skew",
        reason=(
            f"your clock is {behind} s behind the manifest's signedAt ({signed}); "
            "fix the host clock"
        ),
    )


def target() -> wire.EvaluatedTarget:
    return wire.EvaluatedTarget(
        closure_hash=NEW,
        channel_ref="a" * 64,
        evaluated_at=NOW,
        rollout_id="a" * 64,
        signed_at=NOW,
        freshness_window_secs=86_400,
        wave_index=0,
        activate=wire.Activate(),
    )


def test_the_refusal_is_its_own_fetch_outcome_and_still_reported() -> None:
    state = AgentState(
        hostname="h1",
        phase=Phase.FETCHING_MANIFEST,
        current=OLD,
        target=PendingTarget(target=target(), received_at=NOW),
    )
    failed = ManifestFailed(kind="clock-skew", reason="your clock is 600 s behind …")
    new, actions = step(state, failed, NOW)
    assert new.phase is Phase.IDLE
    assert new.persisted.last_fetch_outcome == wire.FetchOutcome(
        result=wire.FETCH_CLOCK_SKEW, rollout_id="a" * 64, error=failed.reason
    )
    assert [a.event for a in actions if isinstance(a, Report)] == [wire.MANIFEST_VERIFY_FAILED]
    # The next checkin says so, and carries the agent's clock.
    body = checkin_request(new, NOW + timedelta(seconds=5))
    assert body.last_fetch_outcome == new.persisted.last_fetch_outcome
    assert body.sent_at == NOW + timedelta(seconds=5)


PLAN = dec.HostPlan(declared=True, closure_hash=NEW, rollout_id="a" * 64, wave_index=0)


@pytest.mark.parametrize(
    ("result", "held"),
    [(wire.FETCH_CLOCK_SKEW, False), (wire.FETCH_FAILED, False), (wire.FETCH_VERIFY_FAILED, True)],
)
def test_a_clock_skew_holds_nothing_at_the_cp(result: str, held: bool) -> None:
    facts = dec.CheckinFacts(
        hostname="h1",
        current_closure=OLD,
        last_fetch_outcome=wire.FetchOutcome(result=result, rollout_id="a" * 64),
    )
    decision = dec.decide_checkin(facts, PLAN, None, lambda: None, NOW)
    assert isinstance(decision, dec.NoTarget) is held


def test_skew_is_agent_time_minus_receive_time() -> None:
    assert clockskew.skew_secs(NOW - timedelta(seconds=600.4), NOW) == -600
    assert clockskew.skew_secs(NOW + timedelta(seconds=90), NOW) == 90
    assert not clockskew.is_skewed(-60) and clockskew.is_skewed(-61)


def test_warnings_are_rate_limited_per_host() -> None:
    first = clockskew.SkewWarned(at=NOW, skew_secs=-600)
    assert not clockskew.should_warn(-30, None, NOW)
    assert clockskew.should_warn(-600, None, NOW)
    assert not clockskew.should_warn(-610, first, NOW + timedelta(minutes=9))
    assert clockskew.should_warn(-640, first, NOW + timedelta(minutes=1))  # moved > 30 s
    assert clockskew.should_warn(-600, first, NOW + timedelta(minutes=10))


def test_sent_at_and_clock_skew_are_optional_on_the_wire() -> None:
    body = {
        "hostname": "h1",
        "agentVersion": "t",
        "currentGeneration": {"closureHash": OLD, "bootId": "b"},
    }
    assert wire.parse_checkin_request(body).sent_at is None  # an older agent
    stamped = {**body, "sentAt": "2026-04-24T09:50:00.123Z"}
    req = wire.parse_checkin_request(stamped)
    assert req.sent_at == NOW - timedelta(minutes=10) + timedelta(milliseconds=123)
    assert wire.dump_checkin_request(req) == stamped
    entry = wire.dump_host_status_entry(wire.HostStatusEntry(hostname="h1", clock_skew_secs=-600))
    assert entry["clockSkewSecs"] == -600
    del entry["clockSkewSecs"]  # an older CP
    assert wire.parse_host_status_entry(entry) == wire.HostStatusEntry(hostname="h1")
