"""Simulated time: one simpy clock for the world, a skewed view of it per host."""

from __future__ import annotations

from datetime import datetime, timedelta

import simpy


class SimClock:
    """`epoch + env.now seconds + skew`; never reads the wall clock."""

    def __init__(self, env: simpy.Environment, epoch: datetime, skew: timedelta = timedelta()):
        self.env = env
        self.epoch = epoch
        self.skew = skew

    def now(self) -> datetime:
        return self.epoch + timedelta(seconds=self.env.now) + self.skew

    def seconds_until(self, when: datetime) -> float:
        return max(0.0, (when - self.now()).total_seconds())
