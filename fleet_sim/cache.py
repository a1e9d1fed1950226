"""The binary cache as hosts see it: bandwidth, outages, links dropping mid-copy."""

from __future__ import annotations

import random
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import simpy

from nixfleet.core.agent import FetchDone, FetchFailed
from nixfleet.core.closure import ClosureHash

if TYPE_CHECKING:
    from .host import SimHost


class SimCache:
    def __init__(
        self,
        env: simpy.Environment,
        rng: random.Random,
        *,
        bandwidth: float = 100e6,
        drop_probability: float = 0.0,
    ) -> None:
        self.env = env
        self.rng = rng
        self.bandwidth = bandwidth
        """Bytes per second per transfer."""
        self.drop_probability = drop_probability
        self.up = True

    def fetch(
        self, host: SimHost, closure: ClosureHash
    ) -> Generator[Any, Any, FetchDone | FetchFailed]:
        world = host.world
        if closure in host.profile:
            return FetchDone()  # already in the local store (a profile keeps it alive)
        if not self.up:
            yield self.env.timeout(1.0)
            world.record("fetch-failed", host.name, closure=closure, reason="cache unreachable")
            return FetchFailed(reason="binary cache unreachable (connection refused)")
        seconds = host.behaviour.closure_bytes / self.bandwidth
        if self.drop_probability and self.rng.random() < self.drop_probability:
            yield self.env.timeout(self.rng.uniform(0.0, seconds))
            world.record("fetch-failed", host.name, closure=closure, reason="link dropped")
            return FetchFailed(reason="connection dropped mid-copy")
        yield self.env.timeout(seconds)
        world.record("fetch", host.name, closure=closure)
        return FetchDone()
