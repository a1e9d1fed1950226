"""The control plane's SQLite state DB: one synchronous adapter, one transaction per call.

Opened by the CP daemon and by the fleet simulator. `Store.open` sets WAL (so the
`-wal`/`-shm` files the disaster-recovery runbook deletes exist), `synchronous=FULL`
(a committed row survives a kill -9 or a power cut), `foreign_keys=ON` and a busy
timeout, registers the SQL functions below and applies the migrations
(`migrate.py`; a divergent history raises `MigrationMismatch`).

Timestamps: the store writes RFC 3339 UTC text (`format_instant`); SQLite defaults and
operator hand edits (the cookbook's `datetime('now')`) write `YYYY-MM-DD HH:MM:SS`.
Stored instants are never compared as raw text (seed 000's rollback timer: `T` sorts
above a space). Python parses them with `parse_instant`; SQL calls

- `deadline_passed(deadline, now)`: `core.deadline.deadline_text_passed`, the one
  deadline comparison. A missing or unparseable deadline counts as passed, so no
  pending row can stay pending forever (the seed-000 symptom).
- `instant_before(a, b)`: a < b as instants; NULL if either side is NULL or
  unparseable (such rows are never pruned).

`pending_confirms` keeps one row per dispatch: a host's newest row (highest id) is its
current dispatch, older rows are history (`terminal_state`/`terminal_at` stamp how a
dispatch ended). Rows come back as frozen dataclasses.
"""

from __future__ import annotations

import enum
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from nixfleet.core import wire
from nixfleet.core.deadline import deadline_text_passed
from nixfleet.core.dispatch import (
    CANCELLED,
    CONFIRMED,
    DEFERRED,
    OP_STATES,
    PENDING,
    ROLLED_BACK,
    OpRow,
)
from nixfleet.core.errors import ParseError
from nixfleet.core.projection import DispatchRow, ParticipationRow, RolloutRow
from nixfleet.core.rollout_state import (
    CONVERGED,
    EXECUTING,
    FAILED,
    HALTED,
    HEALTHY,
    REVERTED,
    SOAKED,
    RolloutState,
    is_host_rollout_state,
    is_rollout_state,
)
from nixfleet.core.sidecars import Revocation
from nixfleet.core.timeutil import format_instant, parse_instant

from .migrate import Migration, migrate

MEMORY: Final = ":memory:"

TOKEN_REPLAY_TTL: Final = timedelta(hours=24)
DISPATCH_HISTORY_RETENTION: Final = timedelta(days=90)
REPORT_RETENTION: Final = timedelta(days=7)
ROLLOUT_RETENTION: Final = timedelta(days=90)
REPORT_RING: Final = 32
"""Reports kept in memory per host (lifecycle §4.8); `recent_reports`' default."""
REPORTS_PER_HOST: Final = 512
"""Reports kept per host at most (besides the 7-day retention): a host, faulty or
hostile, cannot fill the CP's disk with reports. The oldest go first."""

DEFAULT_BUSY_TIMEOUT_MS: Final = 5_000

SOURCE_OPERATOR: Final = "operator"
SOURCE_SIDECAR: Final = "sidecar"

# History stamps (`pending_confirms.terminal_state`).
TERMINAL_CONVERGED: Final = "converged"
TERMINAL_CONVERGED_AT_DISPATCH: Final = "converged-at-dispatch"
TERMINAL_ROLLED_BACK: Final = ROLLED_BACK
TERMINAL_CANCELLED: Final = CANCELLED

OUTSTANDING_EVENT_KINDS: Final = (wire.COMPLIANCE_FAILURE, wire.RUNTIME_GATE_ERROR)
"""Report kinds that hold waves in enforce mode (lifecycle §3.6)…"""
DISCOUNTED_SIGNATURES: Final = (wire.SIGNATURE_MISMATCH, wire.SIGNATURE_MALFORMED)
"""…unless their signature is mismatched or malformed."""

SWEEP_PREDICATE = "state = 'pending' AND deadline_passed(confirm_deadline, :now)"
"""The rollback sweep's WHERE clause (H5), in one named place. `:now` is the sweep's
instant as RFC 3339 text. The seed-000 bug was `confirm_deadline < datetime('now')`."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_OPEN_STATES: Final = (PENDING, DEFERRED)


class _Keep(enum.Enum):
    KEEP = "keep"


KEEP: Final = _Keep.KEEP
"""`set_participation(healthy_since=KEEP)`: leave `last_healthy_since` as it is."""


# --- SQL functions ---------------------------------------------------------------


def _sql_deadline_passed(deadline: object, now: object) -> int | None:
    if now is None:
        return None
    if deadline is None:
        return 1
    try:
        return int(deadline_text_passed(str(deadline), str(now)))
    except ParseError:
        return 1


def _sql_instant_before(a: object, b: object) -> int | None:
    if a is None or b is None:
        return None
    try:
        return int(parse_instant(str(a)) < parse_instant(str(b)))
    except ParseError:
        return None


def register_functions(conn: sqlite3.Connection) -> None:
    """The SQL functions the store's queries use (see the module docstring)."""
    conn.create_function("deadline_passed", 2, _sql_deadline_passed, deterministic=True)
    conn.create_function("instant_before", 2, _sql_instant_before, deterministic=True)


# --- time helpers ----------------------------------------------------------------


def _text(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return format_instant(dt)


def _instant(text: object) -> datetime | None:
    """A stored instant in either form; None when NULL or unparseable."""
    if text is None:
        return None
    try:
        return parse_instant(str(text))
    except ParseError:
        return None


def _aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


# --- rows ------------------------------------------------------------------------

_DISPATCH_COLUMNS: Final = (
    "id, hostname, rollout_id, wave, target_closure_hash, target_channel_ref, state, "
    "dispatched_at, confirm_deadline, confirmed_at, terminal_state, terminal_at"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchRecord:
    """One `pending_confirms` row: a dispatch of a target to a host."""

    id: int
    hostname: str
    rollout_id: str
    wave: int
    target_closure_hash: str
    target_channel_ref: str
    state: str
    dispatched_at: datetime
    confirm_deadline: datetime
    """Unparseable or missing stored text reads as the dispatch instant (passed)."""
    confirmed_at: datetime | None
    terminal_state: str | None
    terminal_at: datetime | None
    confirm_deadline_text: str | None
    """The deadline exactly as stored."""

    def as_op_row(self) -> OpRow:
        return OpRow(
            rollout_id=self.rollout_id,
            target_closure_hash=self.target_closure_hash,
            state=self.state,
            confirm_deadline=self.confirm_deadline,
            wave=self.wave,
        )

    def as_dispatch_row(self) -> DispatchRow:
        return DispatchRow(
            hostname=self.hostname,
            rollout_id=self.rollout_id,
            state=self.state,
            target_closure_hash=self.target_closure_hash,
        )

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> DispatchRecord:
        dispatched = _instant(r["dispatched_at"]) or _EPOCH
        return cls(
            id=int(r["id"]),
            hostname=r["hostname"],
            rollout_id=r["rollout_id"],
            wave=int(r["wave"]),
            target_closure_hash=r["target_closure_hash"],
            target_channel_ref=r["target_channel_ref"],
            state=r["state"],
            dispatched_at=dispatched,
            confirm_deadline=_instant(r["confirm_deadline"]) or dispatched,
            confirmed_at=_instant(r["confirmed_at"]),
            terminal_state=r["terminal_state"],
            terminal_at=_instant(r["terminal_at"]),
            confirm_deadline_text=r["confirm_deadline"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutRecord:
    """One `rollouts` row with every column."""

    rollout_id: str
    channel: str
    created_at: datetime | None
    superseded_at: datetime | None
    superseded_by: str | None
    current_wave: int
    state: RolloutState
    terminal_at: datetime | None

    @property
    def superseded(self) -> bool:
        return self.superseded_at is not None

    def as_row(self) -> RolloutRow:
        return RolloutRow(
            rollout_id=self.rollout_id,
            channel=self.channel,
            current_wave=self.current_wave,
            state=self.state,
            terminal_at=self.terminal_at,
            superseded=self.superseded,
        )

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> RolloutRecord:
        state = r["state"]
        return cls(
            rollout_id=r["rollout_id"],
            channel=r["channel"],
            created_at=_instant(r["created_at"]),
            superseded_at=_instant(r["superseded_at"]),
            superseded_by=r["superseded_by"],
            current_wave=int(r["current_wave"]),
            state=state if is_rollout_state(state) else EXECUTING,
            terminal_at=_instant(r["terminal_at"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RevocationRecord:
    hostname: str
    not_before: datetime | None
    """None when the stored text is unparseable (such a row revokes every cert)."""
    not_before_text: str
    reason: str | None
    revoked_by: str | None
    revoked_at: datetime | None
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportRecord:
    id: int
    hostname: str
    event_id: str
    received_at: datetime | None
    event_kind: str
    rollout: str | None
    signature_status: str | None
    report_json: str

    @property
    def report(self) -> Any:
        return json.loads(self.report_json)


@dataclass(frozen=True, slots=True, kw_only=True)
class QuarantineRecord:
    channel: str
    closure_hash: str
    reason: str | None
    quarantined_at: datetime | None
    cleared_at: datetime | None

    @property
    def active(self) -> bool:
        return self.cleared_at is None


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneCounts:
    token_replay: int = 0
    dispatch_history: int = 0
    host_reports: int = 0
    rollouts: int = 0
    participation: int = 0


def _participation(r: sqlite3.Row) -> ParticipationRow:
    return ParticipationRow(
        rollout_id=r["rollout_id"],
        hostname=r["hostname"],
        host_state=r["host_state"],
        last_healthy_since=_instant(r["last_healthy_since"]),
    )


# --- the store ---------------------------------------------------------------------


class Store:
    """The CP state DB. Thread-safe (one lock); every public method is one transaction."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.writes = 0
        """Committed write transactions: a cheap version number for caches."""
        """Use `Store.open`; this wraps an already configured, migrated connection."""
        self._conn = conn
        self._lock = threading.RLock()
        self.path = path

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        migrations: Sequence[Migration] | None = None,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    ) -> Store:
        """Open (creating if needed) and migrate. Raises MigrationError on divergence."""
        where = os.fspath(path)
        conn = sqlite3.connect(
            where,
            isolation_level=None,
            check_same_thread=False,
            timeout=busy_timeout_ms / 1000,
        )
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if where != MEMORY:
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            register_functions(conn)
            migrate(conn, migrations)
        except BaseException:
            conn.close()
            raise
        return cls(conn, where)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection, for diagnostics and tests; prefer the typed methods."""
        return self._conn

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")
                if write:
                    self.writes += 1

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        """A read transaction: several SELECTs see one snapshot."""
        return self._tx(write=False)

    @contextmanager
    def _one(self) -> Iterator[sqlite3.Connection]:
        """A single SELECT: atomic on its own in autocommit mode, so no BEGIN/COMMIT
        round trips (these run several times per checkin)."""
        with self._lock:
            yield self._conn

    # --- pending_confirms: dispatch rows -------------------------------------------

    @staticmethod
    def _dispatch_by_id(conn: sqlite3.Connection, dispatch_id: int) -> DispatchRecord | None:
        r = conn.execute(
            f"SELECT {_DISPATCH_COLUMNS} FROM pending_confirms WHERE id = ?", (dispatch_id,)
        ).fetchone()
        return DispatchRecord.from_row(r) if r is not None else None

    @staticmethod
    def _latest(conn: sqlite3.Connection, hostname: str) -> DispatchRecord | None:
        r = conn.execute(
            f"SELECT {_DISPATCH_COLUMNS} FROM pending_confirms WHERE hostname = ? "
            "ORDER BY id DESC LIMIT 1",
            (hostname,),
        ).fetchone()
        return DispatchRecord.from_row(r) if r is not None else None

    @staticmethod
    def _close_open(
        conn: sqlite3.Connection, hostname: str, now: str, *, keep_id: int | None = None
    ) -> int:
        """Cancel the host's still-open (pending / deferred) rows: a newer dispatch
        replaces them."""
        cur = conn.execute(
            "UPDATE pending_confirms SET state = 'cancelled', terminal_state = 'cancelled', "
            "terminal_at = ? WHERE hostname = ? AND state IN (?, ?) AND id IS NOT ?",
            (now, hostname, *_OPEN_STATES, keep_id),
        )
        return cur.rowcount

    def insert_dispatch(
        self,
        hostname: str,
        rollout_id: str,
        wave: int,
        target_closure_hash: str,
        target_channel_ref: str,
        *,
        dispatched_at: datetime,
        deadline: datetime,
    ) -> DispatchRecord:
        """H1: a new `pending` row, the host's current dispatch from now on. The host's
        older rows still pending or deferred are cancelled (history)."""
        at = _text(dispatched_at)
        with self._tx() as conn:
            self._close_open(conn, hostname, at)
            cur = conn.execute(
                "INSERT INTO pending_confirms (hostname, rollout_id, wave, target_closure_hash, "
                "target_channel_ref, state, dispatched_at, confirm_deadline) "
                "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
                (
                    hostname,
                    rollout_id,
                    wave,
                    target_closure_hash,
                    target_channel_ref,
                    at,
                    _text(deadline),
                ),
            )
            row = self._dispatch_by_id(conn, int(cur.lastrowid or 0))
        assert row is not None
        return row

    def dispatch(self, dispatch_id: int) -> DispatchRecord | None:
        with self._read() as conn:
            return self._dispatch_by_id(conn, dispatch_id)

    def latest_dispatch(self, hostname: str) -> DispatchRecord | None:
        """The host's current dispatch (its newest row)."""
        with self._one() as conn:
            return self._latest(conn, hostname)

    def dispatch_for(self, hostname: str, rollout_id: str) -> DispatchRecord | None:
        """The host's newest row for one rollout."""
        with self._one() as conn:
            r = conn.execute(
                f"SELECT {_DISPATCH_COLUMNS} FROM pending_confirms "
                "WHERE hostname = ? AND rollout_id = ? ORDER BY id DESC LIMIT 1",
                (hostname, rollout_id),
            ).fetchone()
        return DispatchRecord.from_row(r) if r is not None else None

    def dispatch_history(self, hostname: str, *, limit: int = 5) -> list[DispatchRecord]:
        """The host's newest rows first (what the cookbook's stuck-agent query shows)."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_DISPATCH_COLUMNS} FROM pending_confirms WHERE hostname = ? "
                "ORDER BY id DESC LIMIT ?",
                (hostname, limit),
            ).fetchall()
        return [DispatchRecord.from_row(r) for r in rows]

    def latest_dispatches(self) -> list[DispatchRecord]:
        """Every host's current dispatch, by hostname."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_DISPATCH_COLUMNS} FROM pending_confirms WHERE id IN "
                "(SELECT MAX(id) FROM pending_confirms GROUP BY hostname) ORDER BY hostname"
            ).fetchall()
        return [DispatchRecord.from_row(r) for r in rows]

    def latest_dispatch_rows(self) -> list[DispatchRow]:
        """`latest_dispatches` in the projection's shape: only the four columns it reads
        (the reconcile tick loads every host's row)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT hostname, rollout_id, state, target_closure_hash FROM pending_confirms "
                "WHERE id IN (SELECT MAX(id) FROM pending_confirms GROUP BY hostname) "
                "ORDER BY hostname"
            ).fetchall()
        return [
            DispatchRow(
                hostname=r["hostname"],
                rollout_id=r["rollout_id"],
                state=r["state"],
                target_closure_hash=r["target_closure_hash"],
            )
            for r in rows
        ]

    def dispatch_count(
        self,
        hostname: str,
        *,
        rollout_id: str | None = None,
        closure_hash: str | None = None,
    ) -> int:
        """How many dispatch rows the host has (optionally for one rollout / closure):
        the ghost-loop symptom is this number growing every checkin."""
        with self._read() as conn:
            r = conn.execute(
                "SELECT COUNT(*) FROM pending_confirms WHERE hostname = :host "
                "AND (:rid IS NULL OR rollout_id = :rid) "
                "AND (:closure IS NULL OR target_closure_hash = :closure)",
                {"host": hostname, "rid": rollout_id, "closure": closure_hash},
            ).fetchone()
        return int(r[0])

    @staticmethod
    def _set_state(conn: sqlite3.Connection, dispatch_id: int, state: str, now: str) -> bool:
        if state not in OP_STATES:
            raise ValueError(f"not a pending_confirms state: {state!r}")
        if state == CONFIRMED:
            # A revived row (H6, H3) is open again: drop a rolled-back/cancelled stamp.
            sql = (
                "UPDATE pending_confirms SET state = 'confirmed', confirmed_at = :now, "
                "terminal_state = CASE WHEN terminal_state IN ('rolled-back', 'cancelled') "
                "THEN NULL ELSE terminal_state END, "
                "terminal_at = CASE WHEN terminal_state IN ('rolled-back', 'cancelled') "
                "THEN NULL ELSE terminal_at END WHERE id = :id"
            )
        elif state in (ROLLED_BACK, CANCELLED):
            sql = (
                "UPDATE pending_confirms SET state = :state, terminal_state = :state, "
                "terminal_at = :now WHERE id = :id"
            )
        else:
            sql = (
                "UPDATE pending_confirms SET state = :state, terminal_state = NULL, "
                "terminal_at = NULL WHERE id = :id"
            )
        cur = conn.execute(sql, {"state": state, "now": now, "id": dispatch_id})
        return cur.rowcount > 0

    def set_dispatch_state(self, dispatch_id: int, state: str, *, now: datetime) -> bool:
        """Move one row to `state`: `confirmed` stamps confirmed_at; `rolled-back` and
        `cancelled` stamp the history (terminal_state, terminal_at). False: no such row."""
        with self._tx() as conn:
            return self._set_state(conn, dispatch_id, state, _text(now))

    def mark_confirmed(self, dispatch_id: int, *, now: datetime) -> bool:
        return self.set_dispatch_state(dispatch_id, CONFIRMED, now=now)

    def mark_rolled_back(self, dispatch_id: int, *, now: datetime) -> bool:
        return self.set_dispatch_state(dispatch_id, ROLLED_BACK, now=now)

    def mark_cancelled(self, dispatch_id: int, *, now: datetime) -> bool:
        return self.set_dispatch_state(dispatch_id, CANCELLED, now=now)

    def mark_deferred(self, dispatch_id: int, *, now: datetime) -> bool:
        """H7: the agent deferred activation to the next reboot; the sweep skips it."""
        return self.set_dispatch_state(dispatch_id, DEFERRED, now=now)

    def confirm_dispatch(
        self, dispatch_id: int, *, now: datetime, healthy_since: datetime | None = None
    ) -> DispatchRecord | None:
        """H2 / H6, atomically: the row `confirmed` and its (rollout, host) Healthy since
        `healthy_since` (default now). None when the row does not exist."""
        at = _text(now)
        with self._tx() as conn:
            if not self._set_state(conn, dispatch_id, CONFIRMED, at):
                return None
            row = self._dispatch_by_id(conn, dispatch_id)
            assert row is not None
            self._upsert_participation(
                conn, row.rollout_id, row.hostname, HEALTHY, at, _text(healthy_since or now)
            )
            return row

    def revive_confirmed(self, dispatch_id: int, *, now: datetime) -> DispatchRecord | None:
        """H6: a pending / rolled-back row whose host runs the target is confirmed after
        all (the confirm reply was lost); Healthy since now."""
        return self.confirm_dispatch(dispatch_id, now=now)

    def confirm_attested(
        self,
        hostname: str,
        rollout_id: str,
        wave: int,
        closure_hash: str,
        *,
        healthy_since: datetime,
        now: datetime,
    ) -> DispatchRecord:
        """H3 (orphan-confirm recovery) and H15 (signed lastConfirmedAt), atomically:
        the host's dispatch for (rollout, closure) `confirmed` — its newest row when that
        is the one, else a new row born confirmed — plus Healthy since `healthy_since`."""
        at = _text(now)
        with self._tx() as conn:
            latest = self._latest(conn, hostname)
            if (
                latest is not None
                and latest.rollout_id == rollout_id
                and latest.target_closure_hash == closure_hash
            ):
                self._set_state(conn, latest.id, CONFIRMED, at)
                conn.execute(
                    "UPDATE pending_confirms SET wave = ? WHERE id = ?", (wave, latest.id)
                )
                row_id = latest.id
            else:
                self._close_open(conn, hostname, at)
                cur = conn.execute(
                    "INSERT INTO pending_confirms (hostname, rollout_id, wave, "
                    "target_closure_hash, target_channel_ref, state, dispatched_at, "
                    "confirm_deadline, confirmed_at) VALUES (?, ?, ?, ?, ?, 'confirmed', ?, ?, ?)",
                    (hostname, rollout_id, wave, closure_hash, rollout_id, at, at, at),
                )
                row_id = int(cur.lastrowid or 0)
            self._upsert_participation(
                conn, rollout_id, hostname, HEALTHY, at, _text(min(_aware(healthy_since), now))
            )
            row = self._dispatch_by_id(conn, row_id)
        assert row is not None
        return row

    def record_converged_at_dispatch(
        self, hostname: str, rollout_id: str, wave: int, closure_hash: str, *, now: datetime
    ) -> bool:
        """H10: the host already runs the declared closure and has no participation row
        for the rollout: a `confirmed` row born with history `converged-at-dispatch`,
        plus Converged, atomically. False (nothing written) when a participation row
        exists already."""
        at = _text(now)
        with self._tx() as conn:
            exists = conn.execute(
                "SELECT 1 FROM host_rollout_state WHERE rollout_id = ? AND hostname = ?",
                (rollout_id, hostname),
            ).fetchone()
            if exists is not None:
                return False
            self._close_open(conn, hostname, at)
            conn.execute(
                "INSERT INTO pending_confirms (hostname, rollout_id, wave, target_closure_hash, "
                "target_channel_ref, state, dispatched_at, confirm_deadline, confirmed_at, "
                "terminal_state, terminal_at) "
                "VALUES (?, ?, ?, ?, ?, 'confirmed', ?, ?, ?, 'converged-at-dispatch', ?)",
                (hostname, rollout_id, wave, closure_hash, rollout_id, at, at, at, at),
            )
            self._upsert_participation(conn, rollout_id, hostname, CONVERGED, at, KEEP)
            return True

    def cancel_open_dispatches(
        self, closure_hash: str, *, now: datetime, rollout_id: str | None = None
    ) -> int:
        """H11: pending / deferred rows targeting a quarantined closure → `cancelled`."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE pending_confirms SET state = 'cancelled', terminal_state = 'cancelled', "
                "terminal_at = :now WHERE target_closure_hash = :closure "
                "AND state IN ('pending', 'deferred-pending-reboot') "
                "AND (:rid IS NULL OR rollout_id = :rid)",
                {"now": _text(now), "closure": closure_hash, "rid": rollout_id},
            )
            return cur.rowcount

    def sweep_expired(self, *, now: datetime) -> list[DispatchRecord]:
        """H5, the rollback timer: every `pending` row whose deadline has passed becomes
        `rolled-back` (history stamped). Deferred rows are never swept. The WHERE clause
        is `SWEEP_PREDICATE`; it calls the registered `deadline_passed`.

        A sweep that finds nothing takes no write lock, so an operator's `sqlite3`
        hand edit (which waits for no lock) does not collide with the timer."""
        with self._read() as conn:
            due = conn.execute(
                f"SELECT 1 FROM pending_confirms WHERE {SWEEP_PREDICATE} LIMIT 1",
                {"now": _text(now)},
            ).fetchone()
        if due is None:
            return []
        with self._tx() as conn:
            rows = conn.execute(
                "UPDATE pending_confirms SET state = 'rolled-back', "
                "terminal_state = 'rolled-back', terminal_at = :now "
                f"WHERE {SWEEP_PREDICATE} RETURNING {_DISPATCH_COLUMNS}",
                {"now": _text(now)},
            ).fetchall()
        return sorted((DispatchRecord.from_row(r) for r in rows), key=lambda d: d.id)

    # --- host_rollout_state: participation rows --------------------------------------

    @staticmethod
    def _upsert_participation(
        conn: sqlite3.Connection,
        rollout_id: str,
        hostname: str,
        state: str,
        now: str,
        since: str | _Keep | None,
    ) -> None:
        if not is_host_rollout_state(state):
            raise ValueError(f"not a HostRolloutState: {state!r}")
        if since is KEEP:
            conn.execute(
                "INSERT INTO host_rollout_state (rollout_id, hostname, host_state, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (rollout_id, hostname) DO UPDATE SET "
                "host_state = excluded.host_state, updated_at = excluded.updated_at",
                (rollout_id, hostname, state, now),
            )
        else:
            conn.execute(
                "INSERT INTO host_rollout_state (rollout_id, hostname, host_state, "
                "last_healthy_since, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (rollout_id, hostname) DO UPDATE SET "
                "host_state = excluded.host_state, "
                "last_healthy_since = excluded.last_healthy_since, "
                "updated_at = excluded.updated_at",
                (rollout_id, hostname, state, since, now),
            )

    def participation(self, rollout_id: str, hostname: str) -> ParticipationRow | None:
        with self._one() as conn:
            r = conn.execute(
                "SELECT rollout_id, hostname, host_state, last_healthy_since "
                "FROM host_rollout_state WHERE rollout_id = ? AND hostname = ?",
                (rollout_id, hostname),
            ).fetchone()
        return _participation(r) if r is not None else None

    def participation_rows(self, rollout_id: str | None = None) -> list[ParticipationRow]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT rollout_id, hostname, host_state, last_healthy_since "
                "FROM host_rollout_state WHERE (:rid IS NULL OR rollout_id = :rid) "
                "ORDER BY rollout_id, hostname",
                {"rid": rollout_id},
            ).fetchall()
        return [_participation(r) for r in rows]

    def set_participation(
        self,
        rollout_id: str,
        hostname: str,
        state: str,
        *,
        now: datetime,
        healthy_since: datetime | _Keep | None = KEEP,
    ) -> None:
        """Upsert (rollout, host) → state. `healthy_since`: a datetime sets
        last_healthy_since, None clears it (H14: the soak restarts), KEEP leaves it."""
        since = healthy_since if healthy_since is KEEP or healthy_since is None else (
            _text(healthy_since)
        )
        with self._tx() as conn:
            self._upsert_participation(conn, rollout_id, hostname, state, _text(now), since)

    def set_healthy(
        self, rollout_id: str, hostname: str, *, since: datetime, now: datetime
    ) -> None:
        self.set_participation(rollout_id, hostname, HEALTHY, now=now, healthy_since=since)

    def set_soaked(self, rollout_id: str, hostname: str, *, now: datetime) -> None:
        """H8."""
        self.set_participation(rollout_id, hostname, SOAKED, now=now)

    def set_converged(self, rollout_id: str, hostname: str, *, now: datetime) -> None:
        self.set_participation(rollout_id, hostname, CONVERGED, now=now)

    def set_failed(self, rollout_id: str, hostname: str, *, now: datetime) -> None:
        """H11."""
        self.set_participation(rollout_id, hostname, FAILED, now=now)

    def set_reverted(self, rollout_id: str, hostname: str, *, now: datetime) -> None:
        """H13 (participation half)."""
        self.set_participation(rollout_id, hostname, REVERTED, now=now)

    def converge_rollout(self, rollout_id: str, *, now: datetime) -> int:
        """H9, atomically: the rollout's Healthy / Soaked hosts → Converged, its open
        dispatch rows stamped `converged`, and its `terminal_at` set (once).
        Returns the number of hosts converged."""
        at = _text(now)
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE host_rollout_state SET host_state = 'Converged', updated_at = ? "
                "WHERE rollout_id = ? AND host_state IN ('Healthy', 'Soaked')",
                (at, rollout_id),
            )
            converged = cur.rowcount
            conn.execute(
                "UPDATE pending_confirms SET terminal_state = 'converged', terminal_at = ? "
                "WHERE rollout_id = ? AND state = 'confirmed' AND terminal_state IS NULL",
                (at, rollout_id),
            )
            conn.execute(
                "UPDATE rollouts SET terminal_at = ? WHERE rollout_id = ? AND terminal_at IS NULL",
                (at, rollout_id),
            )
            return converged

    # --- rollouts --------------------------------------------------------------------

    def ensure_rollout(self, rollout_id: str, channel: str, *, now: datetime) -> bool:
        """Record a rollout (Executing, wave 0). A newly recorded id supersedes the
        channel's other live rollouts. False when it was recorded already."""
        at = _text(now)
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO rollouts (rollout_id, channel, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (rollout_id) DO NOTHING",
                (rollout_id, channel, at),
            )
            if cur.rowcount == 0:
                return False
            conn.execute(
                "UPDATE rollouts SET superseded_at = ?, superseded_by = ? "
                "WHERE channel = ? AND rollout_id != ? AND superseded_at IS NULL",
                (at, rollout_id, channel, rollout_id),
            )
            return True

    def rollout_record(self, rollout_id: str) -> RolloutRecord | None:
        with self._one() as conn:
            r = conn.execute(
                "SELECT * FROM rollouts WHERE rollout_id = ?", (rollout_id,)
            ).fetchone()
        return RolloutRecord.from_row(r) if r is not None else None

    def rollout(self, rollout_id: str) -> RolloutRow | None:
        rec = self.rollout_record(rollout_id)
        return rec.as_row() if rec is not None else None

    def rollout_records(self) -> list[RolloutRecord]:
        """Every recorded rollout, oldest first."""
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM rollouts").fetchall()
        recs = [RolloutRecord.from_row(r) for r in rows]
        # Ordered by parsed instants, never by the raw (possibly mixed-format) text.
        return sorted(recs, key=lambda r: (r.created_at or _EPOCH, r.rollout_id))

    def rollout_rows(self) -> list[RolloutRow]:
        """Every recorded rollout, superseded ones included (flagged)."""
        return [rec.as_row() for rec in self.rollout_records()]

    def current_wave(self, rollout_id: str) -> int:
        """The persisted wave; 0 for an unknown rollout."""
        rec = self.rollout_record(rollout_id)
        return rec.current_wave if rec is not None else 0

    def set_current_wave(self, rollout_id: str, wave: int) -> bool:
        """PromoteWave: monotonic, never lowers. True when the wave advanced."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE rollouts SET current_wave = ? WHERE rollout_id = ? AND current_wave < ?",
                (wave, rollout_id, wave),
            )
            return cur.rowcount > 0

    def set_terminal(self, rollout_id: str, *, now: datetime) -> bool:
        """Stamp terminal_at once (orphan sweep). True when it was unset."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE rollouts SET terminal_at = ? WHERE rollout_id = ? AND terminal_at IS NULL",
                (_text(now), rollout_id),
            )
            return cur.rowcount > 0

    def halt_rollout(self, rollout_id: str) -> bool:
        """Store Halted (decisions.md). True when the rollout was not halted before."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE rollouts SET state = ? WHERE rollout_id = ? AND state != ?",
                (HALTED, rollout_id, HALTED),
            )
            return cur.rowcount > 0

    # --- token_replay ------------------------------------------------------------------

    def record_nonce(self, nonce: str, hostname: str, *, now: datetime) -> bool:
        """Atomically claim a bootstrap-token nonce. False: already used (→ 409)."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO token_replay (nonce, hostname, first_seen) VALUES (?, ?, ?) "
                "ON CONFLICT (nonce) DO NOTHING",
                (nonce, hostname, _text(now)),
            )
            return cur.rowcount == 1

    def nonce_used(self, nonce: str) -> bool:
        with self._read() as conn:
            r = conn.execute("SELECT 1 FROM token_replay WHERE nonce = ?", (nonce,)).fetchone()
        return r is not None

    def restore_nonces(self, spent: Iterable[tuple[str, str, datetime]]) -> int:
        """Put back spent (nonce, hostname, first_seen) from the operator journal, in one
        transaction (one fsync, however many). Returns how many were missing."""
        with self._tx() as conn:
            return conn.executemany(
                "INSERT INTO token_replay (nonce, hostname, first_seen) VALUES (?, ?, ?) "
                "ON CONFLICT (nonce) DO NOTHING",
                [(n, h, _text(at)) for n, h, at in spent],
            ).rowcount

    # --- cert_revocations ----------------------------------------------------------------

    def is_revoked(self, hostname: str, cert_not_before: datetime) -> bool:
        """Revoked iff the cert's notBefore is strictly earlier than the row's
        `not_before` (RFC 3339 or SQLite text). An unparseable row revokes every cert."""
        with self._read() as conn:
            r = conn.execute(
                "SELECT not_before FROM cert_revocations WHERE hostname = ?", (hostname,)
            ).fetchone()
        if r is None:
            return False
        not_before = _instant(r["not_before"])
        return not_before is None or _aware(cert_not_before) < not_before

    def revocation(self, hostname: str) -> RevocationRecord | None:
        with self._read() as conn:
            r = conn.execute(
                "SELECT * FROM cert_revocations WHERE hostname = ?", (hostname,)
            ).fetchone()
        return self._revocation(r) if r is not None else None

    def revocations(self) -> list[RevocationRecord]:
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM cert_revocations ORDER BY hostname").fetchall()
        return [self._revocation(r) for r in rows]

    @staticmethod
    def _revocation(r: sqlite3.Row) -> RevocationRecord:
        return RevocationRecord(
            hostname=r["hostname"],
            not_before=_instant(r["not_before"]),
            not_before_text=str(r["not_before"]),
            reason=r["reason"],
            revoked_by=r["revoked_by"],
            revoked_at=_instant(r["revoked_at"]),
            source=r["source"],
        )

    def revoke(
        self,
        hostname: str,
        not_before: datetime,
        *,
        now: datetime,
        reason: str | None = None,
        revoked_by: str | None = None,
    ) -> None:
        """An operator revocation (what the cookbook's INSERT does), upserted."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO cert_revocations (hostname, not_before, reason, revoked_by, "
                "revoked_at, source) VALUES (?, ?, ?, ?, ?, 'operator') "
                "ON CONFLICT (hostname) DO UPDATE SET not_before = excluded.not_before, "
                "reason = excluded.reason, revoked_by = excluded.revoked_by, "
                "revoked_at = excluded.revoked_at, source = 'operator'",
                (hostname, _text(not_before), reason, revoked_by, _text(now)),
            )

    def restore_revocation(
        self,
        hostname: str,
        not_before_text: str,
        *,
        revoked_at_text: str,
        reason: str | None,
        revoked_by: str | None,
    ) -> bool:
        """Put back an operator row from the operator journal, its text as written.
        An operator row already there is left alone; a sidecar row becomes the
        operator's, keeping its `not_before` if that is the later. True: written."""
        with self._tx() as conn:
            return (
                conn.execute(
                    "INSERT INTO cert_revocations (hostname, not_before, reason, revoked_by, "
                    "revoked_at, source) VALUES (?, ?, ?, ?, ?, 'operator') "
                    "ON CONFLICT (hostname) DO UPDATE SET source = 'operator', "
                    "reason = excluded.reason, revoked_by = excluded.revoked_by, "
                    "not_before = CASE WHEN instant_before(excluded.not_before, "
                    "cert_revocations.not_before) THEN cert_revocations.not_before "
                    "ELSE excluded.not_before END WHERE cert_revocations.source = 'sidecar'",
                    (hostname, not_before_text, reason, revoked_by, revoked_at_text),
                ).rowcount
                > 0
            )

    def unrevoke(self, hostname: str) -> bool:
        """Delete the operator row of `hostname` (sidecar rows are the sidecar's)."""
        with self._tx() as conn:
            return (
                conn.execute(
                    "DELETE FROM cert_revocations WHERE hostname = ? AND source = 'operator'",
                    (hostname,),
                ).rowcount
                > 0
            )

    def replace_sidecar_revocations(
        self, entries: Iterable[Revocation], *, now: datetime
    ) -> tuple[int, int]:
        """Replay the signed revocations list: upsert every entry as a `sidecar` row and
        delete the `sidecar` rows it no longer lists. Operator rows are never deleted
        or relabelled; when the list names a host that has one, only a strictly later
        `not_before` is carried over (the stricter revocation wins). Returns
        (applied, pruned): rows written, sidecar rows deleted."""
        wanted: dict[str, Revocation] = {}
        for e in entries:
            seen = wanted.get(e.hostname)
            if seen is None or _aware(e.not_before) > _aware(seen.not_before):
                wanted[e.hostname] = e
        at = _text(now)
        applied = 0
        with self._tx() as conn:
            existing = {
                r["hostname"]: r
                for r in conn.execute("SELECT hostname, not_before, source FROM cert_revocations")
            }
            for host, e in sorted(wanted.items()):
                text = _text(e.not_before)
                ex = existing.get(host)
                if ex is None or ex["source"] == SOURCE_SIDECAR:
                    conn.execute(
                        "INSERT INTO cert_revocations (hostname, not_before, reason, revoked_by, "
                        "revoked_at, source) VALUES (?, ?, ?, ?, ?, 'sidecar') "
                        "ON CONFLICT (hostname) DO UPDATE SET not_before = excluded.not_before, "
                        "reason = excluded.reason, revoked_by = excluded.revoked_by",
                        (host, text, e.reason, e.revoked_by, at),
                    )
                    applied += 1
                    continue
                current = _instant(ex["not_before"])
                if current is not None and current < _aware(e.not_before):
                    conn.execute(
                        "UPDATE cert_revocations SET not_before = ? WHERE hostname = ?",
                        (text, host),
                    )
                    applied += 1
            stale = [
                h for h, r in existing.items() if r["source"] == SOURCE_SIDECAR and h not in wanted
            ]
            conn.executemany(
                "DELETE FROM cert_revocations WHERE hostname = ? AND source = 'sidecar'",
                [(h,) for h in stale],
            )
        return applied, len(stale)

    # --- host_reports ------------------------------------------------------------------

    def insert_report(
        self,
        req: wire.ReportRequest,
        *,
        event_id: str,
        signature_status: str,
        now: datetime,
    ) -> bool:
        """Persist a report as received. False when the event id exists already."""
        body = json.dumps(wire.dump_report_request(req), sort_keys=True, separators=(",", ":"))
        return self.insert_report_raw(
            req.hostname,
            event_id=event_id,
            event_kind=req.event,
            rollout=req.rollout,
            signature_status=signature_status,
            report_json=body,
            now=now,
        )

    def insert_report_raw(
        self,
        hostname: str,
        *,
        event_id: str,
        event_kind: str,
        rollout: str | None,
        signature_status: str | None,
        report_json: str,
        now: datetime,
    ) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO host_reports (hostname, event_id, received_at, event_kind, "
                "rollout, signature_status, report_json) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (event_id) DO NOTHING",
                (hostname, event_id, _text(now), event_kind, rollout, signature_status,
                 report_json),
            )
            if cur.rowcount != 1:
                return False
            conn.execute(
                "DELETE FROM host_reports WHERE hostname = :h AND id <= (SELECT id FROM "
                "host_reports WHERE hostname = :h ORDER BY id DESC LIMIT 1 OFFSET :keep)",
                {"h": hostname, "keep": REPORTS_PER_HOST},
            )
            return True

    def recent_reports(self, hostname: str, *, limit: int = REPORT_RING) -> list[ReportRecord]:
        """The host's newest `limit` reports, oldest first (the in-memory ring)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM host_reports WHERE hostname = ? ORDER BY id DESC LIMIT ?",
                (hostname, limit),
            ).fetchall()
        return [self._report(r) for r in reversed(rows)]

    def report_hostnames(self) -> list[str]:
        with self._read() as conn:
            rows = conn.execute("SELECT DISTINCT hostname FROM host_reports ORDER BY 1").fetchall()
        return [str(r[0]) for r in rows]

    def outstanding_events(self) -> dict[str, dict[str, int]]:
        """rolloutId → host → compliance-failure / runtime-gate-error reports bound to
        that rollout, minus mismatched or malformed signatures (lifecycle §3.6)."""
        kinds = ", ".join("?" for _ in OUTSTANDING_EVENT_KINDS)
        bad = ", ".join("?" for _ in DISCOUNTED_SIGNATURES)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT rollout, hostname, COUNT(*) FROM host_reports "
                f"WHERE rollout IS NOT NULL AND event_kind IN ({kinds}) "
                f"AND COALESCE(signature_status, '') NOT IN ({bad}) "
                "GROUP BY rollout, hostname",
                (*OUTSTANDING_EVENT_KINDS, *DISCOUNTED_SIGNATURES),
            ).fetchall()
        out: dict[str, dict[str, int]] = {}
        for rollout, host, count in rows:
            out.setdefault(rollout, {})[host] = int(count)
        return out

    @staticmethod
    def _report(r: sqlite3.Row) -> ReportRecord:
        return ReportRecord(
            id=int(r["id"]),
            hostname=r["hostname"],
            event_id=r["event_id"],
            received_at=_instant(r["received_at"]),
            event_kind=r["event_kind"],
            rollout=r["rollout"],
            signature_status=r["signature_status"],
            report_json=r["report_json"],
        )

    # --- quarantined_closures ------------------------------------------------------------

    def quarantine(
        self, channel: str, closure_hash: str, *, now: datetime, reason: str | None = None
    ) -> bool:
        """Quarantine (channel, closure); re-quarantining a cleared one reactivates it.
        True when it was not active before."""
        at = _text(now)
        with self._tx() as conn:
            before = conn.execute(
                "SELECT cleared_at FROM quarantined_closures "
                "WHERE channel = ? AND closure_hash = ?",
                (channel, closure_hash),
            ).fetchone()
            conn.execute(
                "INSERT INTO quarantined_closures (channel, closure_hash, reason, quarantined_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (channel, closure_hash) DO UPDATE SET "
                "reason = excluded.reason, quarantined_at = excluded.quarantined_at, "
                "cleared_at = NULL WHERE quarantined_closures.cleared_at IS NOT NULL",
                (channel, closure_hash, reason, at),
            )
            return before is None or before["cleared_at"] is not None

    def clear_quarantine(self, channel: str, closure_hash: str, *, now: datetime) -> bool:
        """True when an active quarantine was cleared."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE quarantined_closures SET cleared_at = ? WHERE channel = ? "
                "AND closure_hash = ? AND cleared_at IS NULL",
                (_text(now), channel, closure_hash),
            )
            return cur.rowcount > 0

    def quarantined(self) -> dict[str, tuple[str, ...]]:
        """Active quarantines: channel → closure hashes (sorted)."""
        out: dict[str, list[str]] = {}
        for q in self.quarantine_records():
            out.setdefault(q.channel, []).append(q.closure_hash)
        return {ch: tuple(sorted(hs)) for ch, hs in sorted(out.items())}

    def quarantine_records(self, *, include_cleared: bool = False) -> list[QuarantineRecord]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM quarantined_closures WHERE (? OR cleared_at IS NULL) "
                "ORDER BY channel, closure_hash",
                (int(include_cleared),),
            ).fetchall()
        return [
            QuarantineRecord(
                channel=r["channel"],
                closure_hash=r["closure_hash"],
                reason=r["reason"],
                quarantined_at=_instant(r["quarantined_at"]),
                cleared_at=_instant(r["cleared_at"]),
            )
            for r in rows
        ]

    # --- retention -----------------------------------------------------------------------

    def prune(self, *, now: datetime) -> PruneCounts:
        """The hourly prune: token_replay 24 h; dispatch history 90 d (a host's current
        row and open rows are kept); reports 7 d; rollouts finished (terminal or
        superseded) 90 d ago together with their participation rows."""
        cut = {
            "replay": _text(now - TOKEN_REPLAY_TTL),
            "history": _text(now - DISPATCH_HISTORY_RETENTION),
            "reports": _text(now - REPORT_RETENTION),
            "rollouts": _text(now - ROLLOUT_RETENTION),
        }
        with self._tx() as conn:
            replay = conn.execute(
                "DELETE FROM token_replay WHERE instant_before(first_seen, ?)", (cut["replay"],)
            ).rowcount
            history = conn.execute(
                "DELETE FROM pending_confirms WHERE instant_before(dispatched_at, ?) "
                "AND state NOT IN ('pending', 'deferred-pending-reboot') "
                "AND id NOT IN (SELECT MAX(id) FROM pending_confirms GROUP BY hostname)",
                (cut["history"],),
            ).rowcount
            reports = conn.execute(
                "DELETE FROM host_reports WHERE instant_before(received_at, ?)",
                (cut["reports"],),
            ).rowcount
            finished = [
                r[0]
                for r in conn.execute(
                    "SELECT rollout_id FROM rollouts WHERE instant_before(terminal_at, :c) "
                    "OR instant_before(superseded_at, :c)",
                    {"c": cut["rollouts"]},
                )
            ]
            participation = 0
            for rid in finished:
                participation += conn.execute(
                    "DELETE FROM host_rollout_state WHERE rollout_id = ?", (rid,)
                ).rowcount
                conn.execute("DELETE FROM rollouts WHERE rollout_id = ?", (rid,))
        return PruneCounts(
            token_replay=replay,
            dispatch_history=history,
            host_reports=reports,
            rollouts=len(finished),
            participation=participation,
        )
