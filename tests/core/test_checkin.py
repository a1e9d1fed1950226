"""The checkin body as it leaves a host (`checkin.outgoing`): what the daemon and the
simulated host both send."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from nixfleet.core import wire
from nixfleet.core.agent_state import AgentState, LastConfirmed, PersistedState, Phase
from nixfleet.core.checkin import HostView, checkin_request, outgoing
from nixfleet.core.closure import ClosureHash
from nixfleet.core.timeutil import format_instant

NOW = datetime(2026, 4, 24, 10, 0, tzinfo=UTC)
OLD = ClosureHash("1" * 32 + "-nixos-system-h1-26.04")
NEW = ClosureHash("0" * 32 + "-nixos-system-h1-26.05")
RID = "a" * 64
CONFIRMED = NOW - timedelta(minutes=30)
PROBE = wire.HealthProbe(name="app", kind="http", status=wire.PROBE_PASS)
TARGET = wire.EvaluatedTarget(
    closure_hash=NEW,
    channel_ref=RID,
    evaluated_at=NOW - timedelta(hours=1),
    rollout_id=RID,
    signed_at=NOW - timedelta(hours=1),
    signed_at_text=format_instant(NOW - timedelta(hours=1)),
    freshness_window_secs=86_400,
    wave_index=0,
)
STATE = AgentState(
    hostname="h1",
    agent_version="0.1.0",
    phase=Phase.IDLE,
    boot_id="boot-1",
    current=NEW,
    persisted=PersistedState(
        last_target=TARGET,
        last_confirmed_at=LastConfirmed(closure_hash=NEW, confirmed_at=CONFIRMED),
    ),
)


def view(current: ClosureHash | None, **changes: object) -> HostView:
    base = HostView(
        current=current,
        pending=None,
        uptime_secs=42,
        health_probes=(PROBE,),
        health_check_mode="enforce",
        sent_at=NOW + timedelta(seconds=1),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


class Signer:
    def __init__(self) -> None:
        self.claims: list[tuple[str, str, str]] = []

    def __call__(self, *, hostname: str, rollout_id: str, last_confirmed_at: str) -> str:
        self.claims.append((hostname, rollout_id, last_confirmed_at))
        return "c2ln"


def test_the_running_closure_is_attested_with_what_the_host_observes() -> None:
    signer = Signer()
    body = outgoing(checkin_request(STATE, NOW), view(NEW, pending=OLD), signer)
    assert body.last_confirmed_at_wire == format_instant(CONFIRMED)
    assert signer.claims == [("h1", RID, format_instant(CONFIRMED))]
    assert body.attestation_signature == "c2ln"
    assert body.current_generation.channel_ref == RID
    assert body.pending_generation == wire.PendingGeneration(closure_hash=OLD)
    assert (body.uptime_secs, body.health_probes, body.health_check_mode) == (
        42,
        (PROBE,),
        "enforce",
    )
    assert body.sent_at == NOW + timedelta(seconds=1)


def test_a_link_moved_behind_the_agents_back_is_reported_without_the_attestation() -> None:
    signer = Signer()
    body = outgoing(checkin_request(STATE, NOW), view(OLD), signer)
    assert body.current_generation.closure_hash == OLD
    assert body.current_generation.channel_ref is None  # not the target's closure
    assert body.last_confirmed_at is None and body.last_confirmed_at_wire is None
    assert body.attestation_signature is None and signer.claims == []
    encoded = wire.dump_checkin_request(body)
    assert encoded["lastConfirmedAt"] is None and encoded["attestationSignature"] is None


def test_an_unreadable_link_keeps_what_the_reducer_knew() -> None:
    body = outgoing(checkin_request(STATE, NOW), view(None), Signer())
    assert body.current_generation.closure_hash == NEW
    assert body.last_confirmed_at == CONFIRMED


def test_no_host_key_sends_no_attestation() -> None:
    body = outgoing(checkin_request(STATE, NOW), view(NEW), lambda **_claim: None)
    assert body.last_confirmed_at == CONFIRMED and body.attestation_signature is None
