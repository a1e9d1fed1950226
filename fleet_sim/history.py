"""The recorded history of a run: every checkin, dispatch, activation, confirm,
rollback, report and fault, in simulated time. Checkers read it afterwards."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    t: float
    """Seconds since the fleet started (simulated here; wall time on a real fleet)."""
    kind: str
    host: str | None
    detail: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        detail = json.dumps(self.detail, sort_keys=True, separators=(",", ":"), default=str)
        return f"{self.t:.6f} {self.kind} {self.host or '-'} {detail}"


class History:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self._hash = hashlib.sha256()

    def add(self, event: Event) -> None:
        self.events.append(event)
        self._hash.update(event.line().encode())
        self._hash.update(b"\n")

    def record(self, t: float, kind: str, host: str | None = None, **detail: Any) -> None:
        self.add(Event(t, kind, host, detail))

    def trace_hash(self) -> str:
        """sha256 of the whole event trace: same scenario and seed → same hash."""
        return self._hash.hexdigest()

    def of(self, kind: str, host: str | None = None) -> Iterator[Event]:
        return (op for op in self.events if op.kind == kind and (host is None or op.host == host))

    def count(self, kind: str, host: str | None = None) -> int:
        return sum(1 for _ in self.of(kind, host))

    def __len__(self) -> int:
        return len(self.events)
