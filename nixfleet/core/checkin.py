"""The checkin body (lifecycle §5.1), built in one place for every agent shell.

`checkin_request` is what the reducer knows when it decides to check in; `outgoing`
adds what the shell observes as the body leaves (the running system's link, the
pending generation, uptime, probes, the attestation, `sentAt`). The asyncio daemon
and the simulated host both call these two, so a host in the simulator sends what a
real one sends.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from .agent_state import AgentState
from .closure import ClosureHash
from .errors import IllegalTransition
from .timeutil import format_instant
from .wire import (
    CheckinRequest,
    EvaluatedTarget,
    GenerationRef,
    HealthProbe,
    PendingGeneration,
)


class Attest(Protocol):
    """Signs the `lastConfirmedAt` attestation (base64), or None without a host key."""

    def __call__(self, *, hostname: str, rollout_id: str, last_confirmed_at: str) -> str | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class HostView:
    """What the shell observes as the body leaves."""

    current: ClosureHash | None
    """basename(/run/current-system); None when it cannot be read."""
    pending: ClosureHash | None
    """The profile's system when it differs from the booted one (a reboot is due)."""
    uptime_secs: int | None
    health_probes: tuple[HealthProbe, ...]
    health_check_mode: str | None
    sent_at: datetime


def current_closure(state: AgentState) -> ClosureHash:
    if state.current is None:
        raise IllegalTransition("agent step: current closure (unknown before Boot)")
    return state.current


def checkin_request(state: AgentState, now: datetime) -> CheckinRequest:
    """The checkin body as far as the reducer knows it."""
    current = current_closure(state)
    p = state.persisted
    confirmed = p.last_confirmed_at
    confirmed_at = None
    # lastConfirmedAt: for the running closure only, and never from the future.
    if (
        confirmed is not None
        and confirmed.closure_hash == current
        and confirmed.confirmed_at <= now
    ):
        confirmed_at = confirmed.confirmed_at
    return CheckinRequest(
        hostname=state.hostname,
        agent_version=state.agent_version,
        current_generation=GenerationRef(
            closure_hash=current,
            boot_id=state.boot_id,
            channel_ref=_channel_ref(p.last_target, current),
        ),
        last_evaluated_target=p.last_target,
        # Decision: sent whenever known (the reference only with a pending generation,
        # lifecycle §8.8), so the CP's HoldAfterFailure sees every failed fetch.
        last_fetch_outcome=p.last_fetch_outcome,
        last_confirmed_at=confirmed_at,
        last_confirmed_at_text=None if confirmed_at is None else format_instant(confirmed_at),
        sent_at=now,
    )


def outgoing(request: CheckinRequest, view: HostView, attest: Attest) -> CheckinRequest:
    """`request` as it leaves the host.

    `currentGeneration` is the link at send time, not what the reducer last saw: a
    switch the agent did not watch to its end (it was restarted mid-switch) or an
    operator's own switch moves it behind the agent's back, and a stale closure makes
    the CP re-send a target the host already runs. When the link moved, `channelRef`
    follows it and `lastConfirmedAt` is dropped (it was for the closure the reducer
    knew; the attestation names no closure). The attestation signs the
    `lastConfirmedAt` text sent, for the last target's rollout.
    """
    gen = request.current_generation
    target = request.last_evaluated_target
    if view.current is not None and view.current != gen.closure_hash:
        request = replace(
            request,
            current_generation=replace(
                gen, closure_hash=view.current, channel_ref=_channel_ref(target, view.current)
            ),
            last_confirmed_at=None,
            last_confirmed_at_text=None,
        )
    confirmed = request.last_confirmed_at_wire
    attestation = None
    if confirmed is not None and target is not None:
        attestation = attest(
            hostname=request.hostname, rollout_id=target.rollout_id, last_confirmed_at=confirmed
        )
    return replace(
        request,
        pending_generation=None
        if view.pending is None
        else PendingGeneration(closure_hash=view.pending),
        uptime_secs=view.uptime_secs,
        attestation_signature=attestation,
        health_probes=view.health_probes,
        health_check_mode=view.health_check_mode,
        sent_at=view.sent_at,
    )


def _channel_ref(target: EvaluatedTarget | None, current: ClosureHash) -> str | None:
    """The running closure's channel ref, known when it is the last target's."""
    return target.channel_ref if target is not None and target.closure_hash == current else None
