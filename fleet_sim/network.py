"""The simulated network between hosts and the CP: delay, loss and partitions live
in this object, not in either endpoint (simpy's latency example). Bodies cross it as
JSON bytes, as they cross HTTP."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import simpy

from nixfleet.core.errors import Unreachable

T = TypeVar("T")


def json_bytes(body: Mapping[str, Any]) -> bytes:
    """A body as aiohttp sends it (`json=` on the agent, `json_response` on the CP)."""
    return json.dumps(body).encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class Latency:
    """One-way delay in seconds: lognormal around `median` (heavy tail, like real links)."""

    median: float = 0.02
    sigma: float = 0.5

    def sample(self, rng: random.Random) -> float:
        return self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0))


class Network:
    def __init__(
        self,
        env: simpy.Environment,
        rng: random.Random,
        *,
        latency: Latency = Latency(),
        loss: float = 0.0,
        timeout: float = 30.0,
    ) -> None:
        self.env = env
        self.rng = rng
        self.latency = latency
        self.loss = loss
        self.timeout = timeout
        self.cut: set[str] = set()
        """Hosts partitioned away from the CP."""

    def call(
        self, host: str, reachable: Callable[[], bool], fn: Callable[[], T]
    ) -> Generator[simpy.Event, Any, T]:
        """Send a request from `host`; `fn` runs at the far end if it arrives.

        A lost request or reply, a partition or a dead peer surface as Unreachable
        after the client's timeout, exactly as the daemon's HTTP client sees them.
        """
        out = self.latency.sample(self.rng)
        yield self.env.timeout(out)
        if host in self.cut or not reachable() or self._lost():
            yield self.env.timeout(max(0.0, self.timeout - out))
            raise Unreachable(f"{host}: no answer within {self.timeout:g} s")
        result = fn()
        back = self.latency.sample(self.rng)
        if host in self.cut or self._lost():
            yield self.env.timeout(max(0.0, self.timeout - out))
            raise Unreachable(f"{host}: reply lost")
        yield self.env.timeout(back)
        return result

    def _lost(self) -> bool:
        return self.loss > 0 and self.rng.random() < self.loss
