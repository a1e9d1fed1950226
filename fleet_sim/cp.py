"""The simulated control plane: the real `CpService` over a real SQLite store.

Only the shell is simulated: timers are simpy processes, requests arrive through
`fleet_sim.network`, and a crash drops the service (its memory) while the database
survives; a wipe drops the database too (seed 001).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import simpy

from nixfleet.core.errors import NixfleetError
from nixfleet.core.snapshot import SOURCE_BUILD_TIME, SOURCE_UPSTREAM
from nixfleet.core.trust import Trust, parse_trust
from nixfleet.cp.api import NOT_READY
from nixfleet.cp.service import CpService, ServiceSettings
from nixfleet.cp.store import Store

from .clock import SimClock
from .forge import Release

if TYPE_CHECKING:
    from .world import World

log = logging.getLogger("fleet_sim.cp")
T = TypeVar("T")

TICK_SECS = 30.0
SWEEP_SECS = 30.0
POLL_SECS = 60.0


class SimCp:
    def __init__(self, world: World, *, confirm_window_secs: int, agent_poll_secs: float) -> None:
        self.world = world
        self.env: simpy.Environment = world.env
        self.clock = SimClock(world.env, world.epoch)
        self.trust: Trust = parse_trust(world.forge.kit.trust())
        self.settings = ServiceSettings(
            agent_cn_suffix="fleet.sim",
            confirm_window=timedelta(seconds=confirm_window_secs),
            agent_poll=timedelta(seconds=agent_poll_secs),
        )
        self.store: Store | None = None
        self.service: CpService | None = None
        self.up = False
        self.boots = 0
        for period, job in (
            (TICK_SECS, self._tick),
            (SWEEP_SECS, self._sweep),
            (POLL_SECS, self._poll),
        ):
            self.env.process(self._every(period, job))

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Open (or reopen) the DB, prime from the forge, fall back to the baked artifact."""
        if self.store is None:
            self.store = Store.open(":memory:")
        self.service = CpService(
            self.store,
            lambda: self.trust,
            self.settings,
            manifest_source=self.world.forge.manifest,
        )
        self.boots += 1
        forge = self.world.forge
        if forge.up and forge.latest is not None:
            self._offer(forge.latest, SOURCE_UPSTREAM)
        if self.service.snapshot is None and forge.build_time is not None:
            self._offer(forge.build_time, SOURCE_BUILD_TIME)
        self.up = True
        self.world.record("cp-start", None, boot=self.boots, ready=self.service.ready)

    def crash(self) -> None:
        self.up = False
        self.service = None
        self.world.record("cp-crash", None)

    def wipe_db(self) -> None:
        """Seed 001: stop, delete state.db (+ -wal, -shm); the caller restarts."""
        self.crash()
        if self.store is not None:
            self.store.close()
        self.store = None
        self.world.record("cp-wipe", None)

    @property
    def reachable(self) -> bool:
        return self.up and self.service is not None

    # --- requests (what the aiohttp layer does before calling the service) ------------

    def serve(self, fn: Callable[[CpService], T]) -> Callable[[], T]:
        def call() -> T:
            service = self.service
            if service is None:  # the process is down
                raise NOT_READY
            service.require_ready()
            return fn(service)

        return call

    # --- timers -----------------------------------------------------------------------

    def _every(self, period: float, job: Callable[[CpService], None]) -> Generator[Any, Any, None]:
        while True:
            yield self.env.timeout(period)
            if self.up and self.service is not None:
                try:
                    job(self.service)
                except NixfleetError as exc:
                    log.warning("%s: %s", job.__name__, exc)

    def _tick(self, service: CpService) -> None:
        build_time = self.world.forge.build_time
        if build_time is not None:
            self._offer(build_time, SOURCE_BUILD_TIME)
        service.tick(now=self.clock.now())

    def _sweep(self, service: CpService) -> None:
        expired = service.sweep(now=self.clock.now())
        if expired:
            self.world.record("sweep", None, rolled_back=expired)

    def _poll(self, service: CpService) -> None:
        forge = self.world.forge
        if forge.up and forge.latest is not None:
            self._offer(forge.latest, SOURCE_UPSTREAM)

    def _offer(self, release: Release, source: str) -> None:
        service = self.service
        assert service is not None
        before = service.snapshot.fleet_hash if service.snapshot else None
        try:
            service.offer_fleet(release.raw, release.sig, now=self.clock.now(), source=source)
            after = service.snapshot.fleet_hash if service.snapshot else None
            if after != before:
                self.world.record("snapshot", None, release=release.number, source=source)
        except NixfleetError as exc:
            self.world.record("snapshot-rejected", None, release=release.number, reason=str(exc))
