"""The history of a real fleet, read from its journals: the CP's log lines (one file per
CP run), the agents' log lines (one file per agent run) and the backend's own actions,
merged in time order into the backend-neutral `History` (harness.fleet's event kinds).

Log lines start with their RFC 3339 UTC time (nixfleet.logsetup); an event's `t` is
that time minus the fleet's opening time, so actions and log lines share one clock.
The logs are read incrementally (each file from where the last read stopped) whenever
the history is asked for, so it can be read while the fleet runs.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fleet_sim.cp import POLL_FAILED as POLL_FAILED_LINE
from harness.fleet import (
    ACTIVATE,
    ACTIVATION_FAILED,
    CHECKIN,
    CHECKIN_FAILED,
    CONFIRM,
    CP_START,
    DISPATCH,
    MANIFEST,
    POLL_FAILED,
    ROLLBACK,
    SNAPSHOT,
    Event,
    History,
)

ROLLBACK_FAILED = "rollback-failed"  # host {}: the agent's rollback did not complete
ACTIVATION_OK = ("FiredAndPolled", "DeferredPendingReboot")
"""Activation outcomes that are not failures (agent_events)."""

_CP_RULES: list[tuple[re.Pattern[str], str]] = [
    (POLL_FAILED_LINE, "poll-failed"),
    (re.compile(r"control plane listening .*ready=(?P<ready>\S+)"), "listening"),
    (
        re.compile(
            r"channel-refs poll: verified-fleet snapshot refreshed source=(?P<source>\S+) "
            r"signed_at=(?P<signed_at>\S+) ci_commit=(?P<ci_commit>\S+)"
        ),
        "snapshot",
    ),
    (
        re.compile(r"checkin received closure_hash=(?P<closure>\S+) .* from (?P<host>\S+)$"),
        "checkin",
    ),
    (
        re.compile(
            r"dispatch: target (?P<how>issued|re-offered) .*rollout=(?P<rollout>\S+) "
            r"target_closure=(?P<closure>\S+) .*host=(?P<host>\S+)$"
        ),
        "dispatch",
    ),
    (
        re.compile(
            r"confirm received (?:\((?:repeated; already confirmed|orphan recovered)\) )?"
            r"rollout=(?P<rollout>\S+) .*closure_hash=(?P<closure>\S+) host=(?P<host>\S+)$"
        ),
        "confirm-204",
    ),
    (
        re.compile(
            r"confirm rejected: mismatch rollout=(?P<rollout>\S+) .*confirmed=(?P<closure>\S+) "
            r".*host=(?P<host>\S+)$"
        ),
        "confirm-409",
    ),
    (
        re.compile(
            r"confirm: no matching .*returning 410 rollout=(?P<rollout>\S+) .*host=(?P<host>\S+)$"
        ),
        "confirm-410",
    ),
]

_AGENT_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bactivate closure=(?P<closure>\S+)"), "activate"),
    (re.compile(r"activation outcome=(?P<outcome>\w+) closure=(?P<closure>\S+)"), "outcome"),
    (re.compile(r"\brollback reason=(?P<reason>.*) rollout=(?P<rollout>\S+)$"), "rollback"),
    (re.compile(r"\brollback failed\b"), "rollback-failed"),
    (re.compile(r"\bcheckin failed reason=(?P<reason>.*)$"), "checkin-failed"),
    (re.compile(r"\bmanifest ok rollout=(?P<rollout>\S+) source=(?P<source>\w+)"), "manifest"),
]


def line_time(line: str) -> datetime | None:
    """The RFC 3339 time a log line starts with (None: not a log record)."""
    stamp, _, _ = line.partition(" ")
    try:
        return datetime.fromisoformat(stamp)
    except ValueError:
        return None


@dataclass
class _Tail:
    """A log file read incrementally: only complete lines, each once."""

    path: Path
    offset: int = 0
    partial: bytes = b""

    def new_lines(self) -> list[str]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        return [ln.decode("utf-8", "replace") for ln in lines]


@dataclass
class _Source:
    tail: _Tail
    host: str | None
    """The agent's host; None for a CP run."""
    boot: int = 0
    """The CP run's number (1 = the first)."""
    events: list[Event] = field(default_factory=list)


class LogHistory:
    """`history()` → the merged History; `record()` adds the backend's own actions.

    `cp_logs()` lists the CP runs' log files in start order, `agent_logs()` the
    (host, log file) of every agent run; both are asked on each read, so new runs are
    picked up. `release_of(signed_at)` names the release published with that
    `signedAt` (asked when the history is built, so a release the CP saw before the
    backend registered it is still named)."""

    def __init__(
        self,
        t0: float,
        *,
        cp_logs: Callable[[], Iterable[Path]],
        agent_logs: Callable[[], Iterable[tuple[str, Path]]],
        release_of: Callable[[str], int | None],
    ) -> None:
        self.t0 = t0
        self._cp_logs = cp_logs
        self._agent_logs = agent_logs
        self._release_of = release_of
        self._sources: dict[Path, _Source] = {}
        self._actions: list[Event] = []
        self._dispatched: dict[tuple[str, str], str] = {}
        """(host, rollout) → closure last dispatched (names the closure of a 410)."""
        self._lock = threading.Lock()
        self._built: History | None = None

    def record(self, t: float, kind: str, host: str | None = None, **detail: Any) -> None:
        """One of the backend's own actions (thread-safe: heals come from a timer)."""
        with self._lock:
            self._actions.append(Event(t, kind, host, detail))
            self._built = None

    def history(self) -> History:
        with self._lock:
            if self._read():
                self._built = None
            if self._built is None:
                self._built = self._merge()
            return self._built

    # --- reading ----------------------------------------------------------------------

    def _read(self) -> bool:
        fresh = False
        for boot, path in enumerate(self._cp_logs(), start=1):
            src = self._sources.setdefault(path, _Source(_Tail(path), None, boot))
            fresh |= self._parse(src, self._cp_event)
        for host, path in self._agent_logs():
            src = self._sources.setdefault(path, _Source(_Tail(path), host))
            fresh |= self._parse(src, self._agent_event)
        return fresh

    def _parse(self, src: _Source, event: Callable[[_Source, float, str], Event | None]) -> bool:
        before = len(src.events)
        for line in src.tail.new_lines():
            at = line_time(line)
            if at is None:
                continue
            e = event(src, at.timestamp() - self.t0, line)
            if e is not None:
                src.events.append(e)
        return len(src.events) > before

    def _cp_event(self, src: _Source, t: float, line: str) -> Event | None:
        for rx, what in _CP_RULES:
            m = rx.search(line)
            if m is None:
                continue
            g = m.groupdict()
            host = g.get("host")
            match what:
                case "listening":
                    return Event(
                        t, CP_START, None, {"boot": src.boot, "ready": g["ready"] == "True"}
                    )
                case "snapshot":
                    return Event(
                        t, SNAPSHOT, None, {k: g[k] for k in ("source", "signed_at", "ci_commit")}
                    )
                case "checkin":
                    return Event(t, CHECKIN, host, {"closure": g["closure"]})
                case "poll-failed":
                    why = {"upstream": g["upstream"], "reason": g["reason"]}
                    return Event(t, POLL_FAILED, None, why)
                case "dispatch":
                    self._dispatched[(str(host), g["rollout"])] = g["closure"]
                    detail: dict[str, Any] = {"rollout": g["rollout"], "closure": g["closure"]}
                    if g["how"] == "re-offered":
                        detail["reoffer"] = True
                    return Event(t, DISPATCH, host, detail)
                case _:
                    status = int(what.removeprefix("confirm-"))
                    closure = g.get("closure") or self._dispatched.get((str(host), g["rollout"]))
                    return Event(
                        t,
                        CONFIRM,
                        host,
                        {"rollout": g["rollout"], "status": status, "closure": closure},
                    )
        return None

    def _agent_event(self, src: _Source, t: float, line: str) -> Event | None:
        for rx, what in _AGENT_RULES:
            m = rx.search(line)
            if m is None:
                continue
            g = m.groupdict()
            match what:
                case "activate":
                    return Event(t, ACTIVATE, src.host, {"closure": g["closure"]})
                case "outcome":
                    if g["outcome"] in ACTIVATION_OK:
                        return None
                    return Event(
                        t,
                        ACTIVATION_FAILED,
                        src.host,
                        {"closure": g["closure"], "outcome": g["outcome"]},
                    )
                case "rollback":
                    return Event(
                        t, ROLLBACK, src.host, {"reason": g["reason"], "rollout": g["rollout"]}
                    )
                case "checkin-failed":
                    return Event(t, CHECKIN_FAILED, src.host, {"reason": g["reason"]})
                case "manifest":
                    return Event(
                        t, MANIFEST, src.host, {"rollout": g["rollout"], "source": g["source"]}
                    )
                case _:
                    return Event(t, ROLLBACK_FAILED, src.host, {})
        return None

    # --- merging ----------------------------------------------------------------------

    def _merge(self) -> History:
        events = list(self._actions)
        for src in self._sources.values():
            events.extend(src.events)
        events.sort(key=lambda e: e.t)  # stable: same-instant lines keep their file order
        out = History()
        for e in events:
            if e.kind == SNAPSHOT:
                e = Event(
                    e.t,
                    e.kind,
                    e.host,
                    {**e.detail, "release": self._release_of(e.detail["signed_at"])},
                )
            out.add(e)
        return out
