"""The agent's state: what survives a restart (the state dir, lifecycle §5.9) and what
lives only in memory (phase, current closure, the armed watchdog, loop counters).

`PersistedState` maps to the files of `/var/lib/nixfleet-agent` through `to_files` /
`from_files` (one text per file; the shell writes each atomically and deletes the
files mapped to None) or to one JSON object through `to_json` / `from_json`. A
malformed entry reads as absent, never as an error: a damaged state dir costs at
most one confirm, never a start-up. `read_files` also says which files were dropped
and why, so the shell can tell the operator.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from . import protocol
from .closure import ClosureHash
from .errors import NixfleetError
from .jsonfields import Reader
from .timeutil import format_instant, parse_instant
from .wire import (
    CONFIRM_WINDOW_SECS,
    FETCH_RESULTS,
    EvaluatedTarget,
    FetchOutcome,
    dump_evaluated_target,
    parse_evaluated_target,
)

# State-dir file names (lifecycle §5.9).
LAST_CONFIRMED_AT = "last_confirmed_at"
LAST_DISPATCHED = "last_dispatched"
LAST_TARGET = "last_target"
LAST_FETCH_OUTCOME = "last_fetch_outcome"
LAST_DEFERRED = "last_deferred"
LAST_FAILED_CLOSURE = "last_failed_closure"
STATE_FILES = (
    LAST_CONFIRMED_AT,
    LAST_DISPATCHED,
    LAST_TARGET,
    LAST_FETCH_OUTCOME,
    LAST_DEFERRED,
    LAST_FAILED_CLOSURE,
)


class Phase(StrEnum):
    """Where the agent is on its per-target path (lifecycle §2.3, §5).

    `START` until Boot; `IDLE` between polls; the `…ING` phases each wait for the
    result of exactly one action; `CONFIRM_WINDOW` waits for the next confirm retry
    with the watchdog armed.
    """

    START = "start"
    IDLE = "idle"
    CHECKING_IN = "checking-in"
    FETCHING_MANIFEST = "fetching-manifest"
    FETCHING = "fetching"
    ACTIVATING = "activating"
    CONFIRMING = "confirming"
    CONFIRM_WINDOW = "confirm-window"
    ROLLING_BACK = "rolling-back"


BUSY_PHASES = frozenset(
    {
        Phase.CHECKING_IN,
        Phase.FETCHING_MANIFEST,
        Phase.FETCHING,
        Phase.ACTIVATING,
        Phase.CONFIRMING,
        Phase.ROLLING_BACK,
    }
)
"""Phases waiting for the result of an action in flight."""


# --- persisted records -----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LastDispatched:
    """A target the agent is activating or has activated but not yet confirmed.

    Written before the system is touched; cleared on 204, or once the running system
    is no longer its closure (and it is not waiting for a reboot).
    """

    target: EvaluatedTarget
    """The dispatched target; it carries `activate` (a dispatch without one is never
    recorded, as nothing can be confirmed)."""
    dispatched_at: datetime
    """When the agent received it: the base of its own confirm deadline."""
    confirm_deadline: datetime | None
    """The watchdog deadline; None while the activation waits for a reboot (armed at
    the boot that runs the closure)."""

    @property
    def closure_hash(self) -> ClosureHash:
        return self.target.closure_hash

    @property
    def channel_ref(self) -> str:
        return self.target.channel_ref

    @property
    def confirm_window(self) -> timedelta:
        activate = self.target.activate
        secs = activate.confirm_window_secs if activate is not None else CONFIRM_WINDOW_SECS
        return timedelta(seconds=secs)

    @property
    def confirm_endpoint(self) -> str:
        activate = self.target.activate
        return activate.confirm_endpoint if activate is not None else protocol.CONFIRM


@dataclass(frozen=True, slots=True, kw_only=True)
class LastConfirmed:
    """`last_confirmed_at`: the closure the CP last confirmed, and when."""

    closure_hash: ClosureHash
    confirmed_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class LastDeferred:
    """An activation deferred to the next boot (a switch inhibitor fired)."""

    closure_hash: ClosureHash
    channel_ref: str
    component: str
    deferred_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class LastFailedClosure:
    """The closure whose activation last failed: quarantined on this host for 24 h."""

    closure_hash: ClosureHash
    failure_count: int
    last_failure_at: datetime
    reason: str
    channel_ref: str | None = None
    last_quarantine_post_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistedState:
    """Everything in the state dir the reducer owns (the manifest cache is the shell's)."""

    last_dispatched: LastDispatched | None = None
    last_confirmed_at: LastConfirmed | None = None
    last_target: EvaluatedTarget | None = None
    """The last *confirmed* target: the checkin's `lastEvaluatedTarget`."""
    last_fetch_outcome: FetchOutcome | None = None
    last_deferred: LastDeferred | None = None
    last_failed_closure: LastFailedClosure | None = None

    # -- one JSON object ----------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """`{<file name>: <object>}` for the entries present."""
        out: dict[str, Any] = {}
        if self.last_dispatched is not None:
            out[LAST_DISPATCHED] = _dump_dispatched(self.last_dispatched)
        if self.last_confirmed_at is not None:
            out[LAST_CONFIRMED_AT] = {
                "closureHash": self.last_confirmed_at.closure_hash,
                "confirmedAt": format_instant(self.last_confirmed_at.confirmed_at),
            }
        if self.last_target is not None:
            out[LAST_TARGET] = dump_evaluated_target(self.last_target)
        if self.last_fetch_outcome is not None:
            out[LAST_FETCH_OUTCOME] = _dump_fetch_outcome(self.last_fetch_outcome)
        if self.last_deferred is not None:
            out[LAST_DEFERRED] = _dump_deferred(self.last_deferred)
        if self.last_failed_closure is not None:
            out[LAST_FAILED_CLOSURE] = _dump_failed(self.last_failed_closure)
        return out

    @classmethod
    def from_json(cls, value: Any) -> PersistedState:
        """Inverse of `to_json`; each malformed entry (or a non-object) reads as absent."""
        if not isinstance(value, dict):
            return cls()
        return cls(
            last_dispatched=_lenient(_read_dispatched, value.get(LAST_DISPATCHED)),
            last_confirmed_at=_lenient(_read_confirmed_obj, value.get(LAST_CONFIRMED_AT)),
            last_target=_lenient(_read_target, value.get(LAST_TARGET)),
            last_fetch_outcome=_lenient(_read_fetch_outcome, value.get(LAST_FETCH_OUTCOME)),
            last_deferred=_lenient(_read_deferred, value.get(LAST_DEFERRED)),
            last_failed_closure=_lenient(_read_failed, value.get(LAST_FAILED_CLOSURE)),
        )

    # -- one text per state-dir file ------------------------------------------------

    def to_files(self) -> dict[str, str | None]:
        """Every state file name mapped to its content, or None (delete the file).

        `last_confirmed_at` is `<closure>\\n<rfc3339>\\n` (lifecycle §5.6); the others
        are JSON objects with sorted keys.
        """
        objects = self.to_json()
        out: dict[str, str | None] = {}
        for name in STATE_FILES:
            if name == LAST_CONFIRMED_AT:
                c = self.last_confirmed_at
                out[name] = (
                    None if c is None else f"{c.closure_hash}\n{format_instant(c.confirmed_at)}\n"
                )
            else:
                obj = objects.get(name)
                out[name] = None if obj is None else json.dumps(obj, sort_keys=True) + "\n"
        return out

    @classmethod
    def from_files(cls, files: Mapping[str, str | None]) -> PersistedState:
        """Inverse of `to_files`: missing, None or malformed files read as absent."""
        return cls.read_files(files)[0]

    @classmethod
    def read_files(cls, files: Mapping[str, str | None]) -> tuple[PersistedState, dict[str, str]]:
        """`from_files`, plus why each file present but unusable (empty, truncated, of
        the wrong shape) was dropped, by file name: the shell says so in its log."""
        values: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for name in STATE_FILES:
            text = files.get(name)
            if text is None:
                continue
            try:
                values[name] = _read_file_text(name, text)
            except _MALFORMED as exc:
                problems[name] = str(exc) or type(exc).__name__
        # File names are the field names (lifecycle §5.9).
        return cls(**values), problems


# --- in-memory records -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingTarget:
    """A target being processed, with the instant the agent received it."""

    target: EvaluatedTarget
    received_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackPlan:
    """A rollback in flight and what to do once it is done."""

    prefix: str
    """Names the trigger; a failed rollback reports phase `<prefix>/<rollback phase>`."""
    reason: str
    """The `rollback-triggered` reason."""
    rollout: str | None
    """`rollout` of the follow-up reports."""
    failure_event: str | None = None
    """A report of the failure that caused the rollback, sent once it is done."""
    failure_details: Mapping[str, Any] = field(default_factory=dict)
    restores: ClosureHash | None = None
    """The system the rollback is expected to bring back (used when RollbackDone does
    not say what runs afterwards)."""
    record_failure: bool = False
    """Count the rolled-back closure in `last_failed_closure` once the rollback is done."""
    then_target: PendingTarget | None = None
    """A target from the same checkin reply, handled after a CP-signalled rollback."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentState:
    hostname: str
    agent_version: str = ""
    phase: Phase = Phase.START
    boot_id: str = ""
    current: ClosureHash | None = None
    """Full basename of the running system (None before Boot)."""
    previous: ClosureHash | None = None
    """The system before the last switch or rollback."""
    persisted: PersistedState = field(default_factory=PersistedState)
    target: PendingTarget | None = None
    rollback: RollbackPlan | None = None
    confirm_deadline: datetime | None = None
    """The armed watchdog (set only while waiting for a 204)."""
    checkin_failures: int = 0
    """Consecutive failed checkins (drives the backoff)."""
    resume_checkin: bool = False
    """A poll tick ran recovery first; check in once it is done."""

    @classmethod
    def restore(
        cls, *, hostname: str, agent_version: str = "", persisted: PersistedState | None = None
    ) -> AgentState:
        """A fresh process: phase START with what the state dir held."""
        return cls(
            hostname=hostname,
            agent_version=agent_version,
            persisted=persisted if persisted is not None else PersistedState(),
        )


# --- JSON mapping of the persisted records -------------------------------------------

_T = TypeVar("_T")


_MALFORMED = (NixfleetError, ValueError, TypeError, KeyError, OverflowError)


def _lenient(read: Callable[[Any], _T], value: Any) -> _T | None:
    """`read(value)`, with absent, null or malformed reading as None."""
    if value is None:
        return None
    try:
        return read(value)
    except _MALFORMED:
        return None


def _read_file_text(name: str, text: str) -> Any:
    """One state file's record; raises one of `_MALFORMED` saying what is wrong."""
    if not text.strip():
        raise ValueError("empty file")
    if name == LAST_CONFIRMED_AT:
        return _read_confirmed_text(text)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from exc
    return _FILE_READERS[name](value)


def _instant(r: Reader, key: str) -> datetime:
    return parse_instant(r.str(key), source=r.source, field=r.field(key))


def _opt_instant(r: Reader, key: str) -> datetime | None:
    text = r.opt_str(key)
    return None if text is None else parse_instant(text, source=r.source, field=r.field(key))


def _dump_dispatched(d: LastDispatched) -> dict[str, Any]:
    t = d.target
    return {
        # The flat keys follow lifecycle §5.9 for operators reading the file; `target`
        # is authoritative (it becomes `last_target` on confirm).
        "closureHash": t.closure_hash,
        "channelRef": t.channel_ref,
        "rolloutId": t.rollout_id,
        "complianceMode": t.compliance_mode,
        "confirmEndpoint": d.confirm_endpoint,
        "dispatchedAt": format_instant(d.dispatched_at),
        "confirmDeadline": (
            None if d.confirm_deadline is None else format_instant(d.confirm_deadline)
        ),
        "target": dump_evaluated_target(t),
    }


def _read_dispatched(value: Any) -> LastDispatched:
    r = Reader.root(value, LAST_DISPATCHED)
    target = parse_evaluated_target(r.sub("target").obj, source=LAST_DISPATCHED)
    if target.activate is None:
        raise ValueError("last_dispatched without activate")
    for key, expected in (
        ("closureHash", target.closure_hash),
        ("channelRef", target.channel_ref),
        ("rolloutId", target.rollout_id),
    ):
        if r.opt_str(key) not in (None, expected):
            raise ValueError(f"last_dispatched: {key} disagrees with target")
    return LastDispatched(
        target=target,
        dispatched_at=_instant(r, "dispatchedAt"),
        confirm_deadline=_opt_instant(r, "confirmDeadline"),
    )


def _read_confirmed_obj(value: Any) -> LastConfirmed:
    r = Reader.root(value, LAST_CONFIRMED_AT)
    return LastConfirmed(
        closure_hash=ClosureHash(r.str("closureHash")), confirmed_at=_instant(r, "confirmedAt")
    )


def _read_confirmed_text(text: Any) -> LastConfirmed:
    if not isinstance(text, str):
        raise ValueError("not text")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != 2 or not lines[0]:
        raise ValueError("expected two lines")
    return LastConfirmed(
        closure_hash=ClosureHash(lines[0]),
        confirmed_at=parse_instant(lines[1], source=LAST_CONFIRMED_AT),
    )


def _read_target(value: Any) -> EvaluatedTarget:
    return parse_evaluated_target(value, source=LAST_TARGET)


def _dump_fetch_outcome(f: FetchOutcome) -> dict[str, Any]:
    out: dict[str, Any] = {"result": f.result}
    if f.rollout_id is not None:
        out["rolloutId"] = f.rollout_id
    if f.error is not None:
        out["error"] = f.error
    return out


def _read_fetch_outcome(value: Any) -> FetchOutcome:
    r = Reader.root(value, LAST_FETCH_OUTCOME)
    return FetchOutcome(
        result=r.one_of("result", FETCH_RESULTS),
        rollout_id=r.opt_str("rolloutId"),
        error=r.opt_str("error"),
    )


def _dump_deferred(d: LastDeferred) -> dict[str, Any]:
    return {
        "closureHash": d.closure_hash,
        "channelRef": d.channel_ref,
        "component": d.component,
        "deferredAt": format_instant(d.deferred_at),
    }


def _read_deferred(value: Any) -> LastDeferred:
    r = Reader.root(value, LAST_DEFERRED)
    return LastDeferred(
        closure_hash=ClosureHash(r.str("closureHash")),
        channel_ref=r.str("channelRef"),
        component=r.str("component"),
        deferred_at=_instant(r, "deferredAt"),
    )


def _dump_failed(f: LastFailedClosure) -> dict[str, Any]:
    return {
        "closureHash": f.closure_hash,
        "channelRef": f.channel_ref,
        "failureCount": f.failure_count,
        "lastFailureAt": format_instant(f.last_failure_at),
        "reason": f.reason,
        "lastQuarantinePostAt": (
            None if f.last_quarantine_post_at is None else format_instant(f.last_quarantine_post_at)
        ),
    }


def _read_failed(value: Any) -> LastFailedClosure:
    r = Reader.root(value, LAST_FAILED_CLOSURE)
    count = r.int("failureCount")
    if count < 1:
        raise ValueError("failureCount < 1")
    return LastFailedClosure(
        closure_hash=ClosureHash(r.str("closureHash")),
        channel_ref=r.opt_str("channelRef"),
        failure_count=count,
        last_failure_at=_instant(r, "lastFailureAt"),
        reason=r.str("reason"),
        last_quarantine_post_at=_opt_instant(r, "lastQuarantinePostAt"),
    )


_FILE_READERS: Mapping[str, Callable[[Any], Any]] = {
    LAST_DISPATCHED: _read_dispatched,
    LAST_TARGET: _read_target,
    LAST_FETCH_OUTCOME: _read_fetch_outcome,
    LAST_DEFERRED: _read_deferred,
    LAST_FAILED_CLOSURE: _read_failed,
}
"""The JSON state files' readers (`last_confirmed_at` is text, read on its own)."""
