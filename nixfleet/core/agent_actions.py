"""Agent actions: what the shell must do next. Each ends in one event (`agent_events`).

| action | the shell does | and feeds |
|---|---|---|
| Checkin | POST /v1/agent/checkin (+ uptime, probes, attestation) | CheckinOk / CheckinFailed |
| FetchManifest | cache or GET /v1/rollouts/<id>(+/sig); verify | ManifestOk / ManifestFailed |
| FetchClosure | nix-store --realise /nix/store/<closure> | FetchDone / FetchFailed |
| Activate | nix-env --set, switch-to-configuration, poll | an ActivationOutcome |
| SendConfirm | POST the confirm endpoint | ConfirmAnswered / ConfirmFailed |
| Rollback | nix-env --rollback, old closure's switch, poll | RollbackDone |
| Report | POST /v1/agent/report (signing catalogued events) | ReportSent / ReportFailed |
| PersistState | write the state-dir files atomically | StatePersisted |
| Sleep | wait until `until` | PollTick |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .agent_state import PersistedState
from .closure import ClosureHash
from .wire import CheckinRequest, ConfirmRequest, ReportRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkin:
    request: CheckinRequest
    """Everything the reducer knows. The shell adds `uptimeSecs`, `healthProbes`,
    `healthCheckMode`, `pendingGeneration` and the `attestationSignature` over
    `{hostname, rolloutId: lastEvaluatedTarget.rolloutId, lastConfirmedAt}`
    (`dataclasses.replace`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchManifest:
    rollout_id: str
    wave_index: int
    """The target's waveIndex, 0 when absent: `(hostname, wave)` must be in hostSet."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchClosure:
    closure_hash: ClosureHash


@dataclass(frozen=True, slots=True, kw_only=True)
class Activate:
    closure_hash: ClosureHash
    """Full store basename; the path is `/nix/store/<closure_hash>`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SendConfirm:
    request: ConfirmRequest
    endpoint: str
    """The target's `activate.confirmEndpoint`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rollback:
    reason: str
    rollout: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    event: str
    """A kebab-case kind of `wire.REPORT_EVENTS`."""
    rollout: str | None
    details: Mapping[str, Any] = field(default_factory=dict)
    """snake_case keys per protocol §2.7."""
    occurred_at: datetime

    def to_request(self, *, hostname: str, agent_version: str) -> ReportRequest:
        """The wire body, unsigned (the shell signs catalogued signed events)."""
        return ReportRequest(
            hostname=hostname,
            agent_version=agent_version,
            occurred_at=self.occurred_at,
            rollout=self.rollout,
            event=self.event,
            details=dict(self.details),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistState:
    state: PersistedState
    """Write `state.to_files()`: each file atomically, None ⇒ delete."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Sleep:
    until: datetime


AgentAction = (
    Checkin
    | FetchManifest
    | FetchClosure
    | Activate
    | SendConfirm
    | Rollback
    | Report
    | PersistState
    | Sleep
)
