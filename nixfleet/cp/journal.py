"""The operator journal: what seed 001's wipe must not forget, kept beside state.db.

The disaster-recovery runbook deletes state.db, -wal and -shm. Everything in them comes
back from the signed artifacts and the agents' checkins except two kinds of rows, and
forgetting either would readmit someone:

- operator revocations (`cert_revocations` with source='operator': the cookbook's hand
  INSERT or `nixfleet revoke`). The CP scans them at start, every few seconds and at
  stop, and journals each new or changed row, so a row put in by hand with sqlite3 is
  on disk within seconds (it takes effect at once, from the DB, as before). Sidecar rows
  are not journaled: the signed sidecar replays them.
- spent bootstrap-token nonces (`token_replay`), journaled by enroll before the DB
  claims them: when the journal cannot be written the enrollment gets a 503 and the
  token stays unspent. Nonces past the DB's own 24 h retention are not replayed.

Un-revoking: an operator row that disappears while the CP runs (the operator's DELETE,
`nixfleet revoke --undo`) is journaled as `unrevoke`. A row deleted while the CP is
stopped comes back at start: a wiped DB looks the same, and putting it back is the safe
side. `nixfleet revoke --undo` works either way.

JSON lines, appended (O_APPEND, fsync), never rewritten. At start, before the port
binds, the journal is replayed: missing rows are inserted, rows already there are left
alone. A corrupt or torn line is skipped with one warning naming file and line; an
unreadable file stops start-up, as starting without it would silently un-revoke.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from nixfleet.core.errors import BadInput
from nixfleet.core.idents import escape_controls
from nixfleet.core.timeutil import format_instant, parse_instant

from .api import ApiError
from .store import SOURCE_OPERATOR, TOKEN_REPLAY_TTL, RevocationRecord, Store

log = logging.getLogger("nixfleet.cp")

SYNC_INTERVAL_SECS: Final = 5.0
"""Upper bound on how long a hand-inserted row waits to be journaled."""
VERSION: Final = 1
REVOKE: Final = "revoke"
UNREVOKE: Final = "unrevoke"
NONCE: Final = "nonce"

Entry = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Revoked:
    """An operator row as journaled (its `not_before` text exactly as stored)."""

    not_before: str
    reason: str | None
    revoked_by: str | None
    revoked_at: str = field(compare=False)

    @classmethod
    def of(cls, r: RevocationRecord, now: datetime) -> Revoked:
        return cls(r.not_before_text, r.reason, r.revoked_by, format_instant(r.revoked_at or now))


@dataclass(slots=True)
class Contents:
    """The journal folded: operator revocations in force, spent nonces."""

    revocations: dict[str, Revoked] = field(default_factory=dict)
    nonces: dict[str, tuple[str, datetime]] = field(default_factory=dict)

    def apply(self, e: object) -> None:
        """Fold one parsed line; ValueError/KeyError/BadInput if it is not an entry."""
        if not isinstance(e, dict) or e.get("v") != VERSION:
            raise ValueError(f"not a version {VERSION} entry")
        kind = e.get("kind")
        if kind == REVOKE:
            self.revocations[_str(e, "hostname")] = Revoked(
                _str(e, "not_before"),
                _opt(e, "reason"),
                _opt(e, "revoked_by"),
                _str(e, "revoked_at"),
            )
        elif kind == UNREVOKE:
            self.revocations.pop(_str(e, "hostname"), None)
        elif kind == NONCE:
            at = parse_instant(_str(e, "first_seen"), source="entry", field="first_seen")
            self.nonces[_str(e, "nonce")] = (_str(e, "hostname"), at)
        else:
            raise ValueError(f"unknown kind {kind!r}")


def _str(e: Mapping[str, Any], key: str) -> str:
    value = e[key]
    if not isinstance(value, str):
        raise ValueError(f"{key} is not a string")
    return value


def _opt(e: Mapping[str, Any], key: str) -> str | None:
    return None if e.get(key) is None else _str(e, key)


def revoke_entry(hostname: str, r: Revoked, *, at: datetime) -> Entry:
    return {
        "v": VERSION,
        "kind": REVOKE,
        "at": format_instant(at),
        "hostname": hostname,
        "not_before": r.not_before,
        "reason": r.reason,
        "revoked_by": r.revoked_by,
        "revoked_at": r.revoked_at,
    }


def unrevoke_entry(hostname: str, *, at: datetime) -> Entry:
    return {"v": VERSION, "kind": UNREVOKE, "at": format_instant(at), "hostname": hostname}


def nonce_entry(nonce: str, hostname: str, *, first_seen: datetime) -> Entry:
    return {
        "v": VERSION,
        "kind": NONCE,
        "nonce": nonce,
        "hostname": hostname,
        "first_seen": format_instant(first_seen),
    }


class JournalFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> Contents:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return Contents()
        except OSError as exc:
            raise BadInput(
                f"operator journal: cannot read {self.path} ({exc.strerror}); not starting "
                "without it, as that would readmit revoked certificates and spent tokens"
            ) from exc
        contents = Contents()
        for number, line in enumerate(data.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                contents.apply(json.loads(line))
            except (ValueError, KeyError, RecursionError, BadInput) as exc:
                why = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
                log.warning(
                    "operator journal: skipping corrupt line path=%s line=%d (%s)",
                    self.path,
                    number,
                    escape_controls(why),
                )
        return contents

    def append(self, entries: Sequence[Entry]) -> None:
        """Append one line per entry, then fsync. Raises OSError."""
        data = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in entries)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            end = os.fstat(fd).st_size
            if end and os.pread(fd, 1, end - 1) != b"\n":
                data = b"\n" + data  # a torn last line must not swallow this entry
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if end == 0:  # a new file: its directory entry must be durable too
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


class OperatorJournal:
    """The CP's side: replay at start, then keep the journal up with the DB."""

    def __init__(self, file: JournalFile, store: Store, journaled: dict[str, Revoked]) -> None:
        self.file = file
        self.store = store
        self._journaled = journaled
        self._failing = False

    @classmethod
    def open(cls, path: Path, store: Store, *, now: datetime) -> OperatorJournal:
        """Read `path`, replay it into `store`, journal rows it does not have yet."""
        file = JournalFile(path)
        contents = file.read()
        revocations = sum(
            store.restore_revocation(
                host,
                r.not_before,
                revoked_at_text=r.revoked_at,
                reason=r.reason,
                revoked_by=r.revoked_by,
            )
            for host, r in sorted(contents.revocations.items())
        )
        cut = now - TOKEN_REPLAY_TTL
        nonces = store.restore_nonces(
            (nonce, host, at) for nonce, (host, at) in contents.nonces.items() if at >= cut
        )
        log.info(
            "cert_revocations: replayed from operator journal revocations=%d nonces=%d path=%s",
            revocations,
            nonces,
            path,
        )
        journal = cls(file, store, contents.revocations)
        journal.sync(now=now)
        return journal

    def sync(self, *, now: datetime) -> None:
        """Journal operator rows new or changed since the last sync, and those gone."""
        rows = {
            r.hostname: Revoked.of(r, now)
            for r in self.store.revocations()
            if r.source == SOURCE_OPERATOR
        }
        entries = [
            revoke_entry(host, r, at=now)
            for host, r in sorted(rows.items())
            if self._journaled.get(host) != r
        ]
        entries += [unrevoke_entry(h, at=now) for h in sorted(self._journaled.keys() - rows)]
        if not entries or not self._append(entries):
            return
        self._journaled = rows
        for e in entries:
            host = escape_controls(e["hostname"])
            if e["kind"] == REVOKE:
                log.info(
                    "operator journal: revocation journaled not_before=%s host=%s",
                    escape_controls(e["not_before"]),
                    host,
                )
            else:
                log.warning(
                    "operator journal: un-revocation journaled (operator row deleted) host=%s",
                    host,
                )

    def nonce_spent(self, nonce: str, hostname: str, *, now: datetime) -> None:
        """Journal a nonce about to be claimed; 503 (the token stays unspent) if impossible."""
        if not self._append([nonce_entry(nonce, hostname, first_seen=now)]):
            raise ApiError(
                503,
                "service unavailable",
                "cannot record the token nonce durably; try again later",
                retry_after=30,
            )

    def _append(self, entries: Sequence[Entry]) -> bool:
        try:
            self.file.append(entries)
        except OSError as exc:
            if not self._failing:
                log.error(
                    "operator journal: cannot write %s (%s); revocations and spent tokens "
                    "since are not safe from the DR wipe, enrollment refused until it is",
                    self.file.path,
                    exc.strerror,
                )
            self._failing = True
            return False
        if self._failing:
            log.info("operator journal: writable again path=%s", self.file.path)
        self._failing = False
        return True
