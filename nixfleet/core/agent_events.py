"""Agent events: what happened, fed to the reducer with the instant it happened.

Each action a shell performs ends in exactly one of these (lifecycle §5): the asyncio
daemon and the simulator map their results onto the same types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .closure import ClosureHash
from .wire import CheckinResponse


@dataclass(frozen=True, slots=True, kw_only=True)
class Boot:
    """The process started; the shell read `/run/current-system` and the boot id."""

    current_closure: ClosureHash
    """Full store basename of the running system."""
    boot_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PollTick:
    """A `Sleep` ended (next poll, confirm retry or watchdog deadline)."""


# --- checkin --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckinOk:
    response: CheckinResponse
    current_closure: ClosureHash | None = None
    """What the checkin reported as running (the shell reads `/run/current-system`
    for it). The CP decided on that value, so the reducer adopts it: a switch that
    finished while the agent was down is then known, not re-activated or ignored."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckinFailed:
    """No usable answer (unreachable, 5xx, 503 not ready, bad body)."""

    reason: str


# --- manifest (lifecycle §5.10) --------------------------------------------------

ManifestFailure = Literal["missing", "verify-failed", "mismatch", "clock-skew"]
MANIFEST_FAILURES: tuple[ManifestFailure, ...] = (
    "missing",
    "verify-failed",
    "mismatch",
    "clock-skew",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestOk:
    """The rollout manifest verified and lists this host at the target's wave."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestFailed:
    kind: ManifestFailure
    """`missing` (HTTP, 404, network), `verify-failed` (signature, freshness,
    rejectBefore), `mismatch` (id ≠ advertised, host not in hostSet) or `clock-skew`
    (signed further ahead of this host's clock than the slack: its clock is behind)."""
    reason: str


# --- closure fetch (nix-store --realise) ----------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchDone:
    """The closure is in the local store."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchFailed:
    reason: str
    signature_mismatch: bool = False
    """Nix refused the cache signature (lifecycle §5.3 step 2 phrases)."""
    stderr_tail: str | None = None


# --- activation outcomes (lifecycle §5.3, §5.4) -----------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FiredAndPolled:
    """The switch ran and `/run/current-system` is the expected closure."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SwitchFailed:
    phase: str
    """Wire contract: `nix-env-set`, `defer-bootloader-update`, `systemd-run-fire`,
    `switch-poll-timeout`, `darwin-activate-spawn`, …"""
    exit_code: int | None = None
    stderr_tail: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyMismatch:
    """The system settled on neither the expected nor the previous closure."""

    expected: ClosureHash
    actual: ClosureHash


@dataclass(frozen=True, slots=True, kw_only=True)
class DeferredPendingReboot:
    """A switch inhibitor (dbus, systemd, kernel) changed: installed for next boot."""

    component: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RealiseFailed:
    """The activator could not realise the closure (or the switch lock was held)."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SignatureMismatch:
    """The activator's realise hit a cache signature refusal."""

    stderr_tail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SpawnFailed:
    """The activator could not even be started (reported as `other`)."""

    detail: str


ActivationOutcome = (
    FiredAndPolled
    | SwitchFailed
    | VerifyMismatch
    | DeferredPendingReboot
    | RealiseFailed
    | SignatureMismatch
    | SpawnFailed
)
ACTIVATION_OUTCOMES: tuple[type, ...] = (
    FiredAndPolled,
    SwitchFailed,
    VerifyMismatch,
    DeferredPendingReboot,
    RealiseFailed,
    SignatureMismatch,
    SpawnFailed,
)


# --- confirm, rollback, bookkeeping ------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfirmAnswered:
    """The CP answered the confirm: 204 confirmed, 410 roll back, anything else retry."""

    status: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfirmFailed:
    """No HTTP answer to the confirm (unreachable, timeout)."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackDone:
    ok: bool
    phase: str | None = None
    """On failure: `nix-env-rollback`, `discover-target`, `rollback-poll-timeout`, …"""
    exit_code: int | None = None
    stderr_tail: str | None = None
    current_closure: ClosureHash | None = None
    """The running system afterwards, if the shell read it (default: the previous
    system on success, unchanged on failure)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportSent:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportFailed:
    """The report was not delivered (the shell may buffer and retry it)."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StatePersisted:
    pass


AgentEvent = (
    Boot
    | PollTick
    | CheckinOk
    | CheckinFailed
    | ManifestOk
    | ManifestFailed
    | FetchDone
    | FetchFailed
    | ActivationOutcome
    | ConfirmAnswered
    | ConfirmFailed
    | RollbackDone
    | ReportSent
    | ReportFailed
    | StatePersisted
)
