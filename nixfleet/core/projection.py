"""The CP's rows projected into the reconciler's `Observed` view (lifecycle §1).

The CP keeps rollouts, participation rows and one current dispatch row per host in
SQLite, and checkins in memory. Both the reconcile tick and the per-checkin gate
pre-check read the fleet through this one projection, so they cannot disagree.

`channelRefs` and `lastRolledRefs` are both rolloutIds (lifecycle §8.7 resolved):
a channel's ref is the rolloutId projected from the verified fleet, and it counts as
rolled once a `rollouts` row exists for that id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from .dispatch import CONFIRMED, DEFERRED, PENDING
from .observed import Deferral, HostObservation, Observed, Rollout, RolloutBudget
from .rollout_state import (
    CONFIRM_WINDOW,
    FAILED,
    HEALTHY,
    HostRolloutState,
    RolloutState,
    is_host_rollout_state,
)
from .snapshot import FleetSnapshot

ONLINE_POLLS = 3
"""A host is online while its last checkin is younger than 3 poll intervals."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutRow:
    rollout_id: str
    channel: str
    current_wave: int
    state: RolloutState
    terminal_at: datetime | None = None
    superseded: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipationRow:
    rollout_id: str
    hostname: str
    host_state: str
    last_healthy_since: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchRow:
    """A host's newest `pending_confirms` row."""

    hostname: str
    rollout_id: str
    state: str
    target_closure_hash: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HostCheckin:
    at: datetime
    current_closure: str
    probes_passing: bool = True
    probes_observed: bool = True


_OP_PROJECTION: Mapping[str, HostRolloutState] = {
    PENDING: CONFIRM_WINDOW,
    CONFIRMED: HEALTHY,
    DEFERRED: CONFIRM_WINDOW,
}


def is_online(checkin: HostCheckin | None, now: datetime, poll: timedelta) -> bool:
    return checkin is not None and now - checkin.at < ONLINE_POLLS * poll


def host_states(
    rollout_id: str,
    participation: Iterable[ParticipationRow],
    dispatch_rows: Iterable[DispatchRow],
) -> tuple[dict[str, HostRolloutState], dict[str, datetime]]:
    """Each host's state in one rollout: its participation row when present, else the
    projection of its dispatch row; rolled-back / cancelled rows drop out (Queued)."""
    states: dict[str, HostRolloutState] = {}
    healthy_since: dict[str, datetime] = {}
    for op in dispatch_rows:
        if op.rollout_id == rollout_id and op.state in _OP_PROJECTION:
            states[op.hostname] = _OP_PROJECTION[op.state]
    for row in participation:
        if row.rollout_id != rollout_id:
            continue
        # Unknown literals read as Failed: an operator must look (lifecycle §1).
        states[row.hostname] = row.host_state if is_host_rollout_state(row.host_state) else FAILED
        if row.last_healthy_since is not None:
            healthy_since[row.hostname] = row.last_healthy_since
    return states, healthy_since


def project_observed(
    snapshot: FleetSnapshot,
    rollouts: Iterable[RolloutRow],
    participation: Iterable[ParticipationRow],
    dispatch_rows: Iterable[DispatchRow],
    checkins: Mapping[str, HostCheckin],
    *,
    now: datetime,
    poll: timedelta,
    quarantined: Mapping[str, tuple[str, ...]] | None = None,
    outstanding_events: Mapping[str, Mapping[str, int]] | None = None,
    last_deferrals: Mapping[str, Deferral] | None = None,
    with_host_states: bool = True,
    with_hosts: bool = True,
) -> Observed:
    """The full view for the reconciler. The gates need less: `with_hosts=False`
    leaves out host observations (online, probes), which no gate reads, and
    `with_host_states=False` leaves each rollout's `host_states` empty, enough for a
    fleet where `gates.needs_host_states` is false."""
    participation = list(participation) if with_host_states else []
    dispatch_rows = list(dispatch_rows) if with_host_states else []
    live_ids = set(snapshot.rollout_ids.values())
    recorded = [ro for ro in rollouts if not ro.superseded and ro.rollout_id in live_ids]
    active: list[Rollout] = []
    for ro in recorded:
        states, since = host_states(ro.rollout_id, participation, dispatch_rows)
        manifest = snapshot.manifests.get(ro.channel)
        budgets = tuple(
            RolloutBudget(
                selector=b.selector,
                hosts=b.hosts,
                max_in_flight=b.max_in_flight,
                max_in_flight_pct=b.max_in_flight_pct,
            )
            for b in (manifest.disruption_budgets if manifest is not None else ())
        )
        active.append(
            Rollout(
                id=ro.rollout_id,
                channel=ro.channel,
                target_ref=ro.rollout_id,
                state=ro.state,
                current_wave=ro.current_wave,
                host_states=states,
                last_healthy_since=since,
                budgets=budgets,
                terminal_at=ro.terminal_at,
            )
        )
    rolled = {ro.channel: ro.rollout_id for ro in recorded}
    return Observed(
        channel_refs=dict(snapshot.rollout_ids),
        last_rolled_refs=rolled,
        host_state={
            name: HostObservation(
                online=is_online(checkins.get(name), now, poll),
                current_generation=(c.current_closure if (c := checkins.get(name)) else None),
            )
            for name in (snapshot.fleet.hosts if with_hosts else ())
        },
        active_rollouts=tuple(active),
        outstanding_compliance_events_by_rollout=dict(outstanding_events or {}),
        last_deferrals=dict(last_deferrals or {}),
        host_probes_passing={h: c.probes_passing for h, c in checkins.items() if with_hosts},
        host_probes_observed={h: c.probes_observed for h, c in checkins.items() if with_hosts},
        quarantined_closures=dict(quarantined or {}),
    )
