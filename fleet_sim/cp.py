"""The simulated control plane: the real `CpService` over a real SQLite store, started
and timed by the CP's own `Lifecycle`, answering through the CP's own `endpoints`.

Only the shell is simulated. Timers are simpy processes; the forge is read in memory
and handed over as the runtime's HTTPS fetch hands it (bytes and signature, or why
not); a request arrives as JSON bytes through `fleet_sim.network` with the host's
simulated client certificate and passes the same gates (readiness, protocol header,
identity, revocation, role) as over mTLS. A crash drops the service (its memory) while
the database and the snapshot cache survive; a wipe drops the database too (seed 001).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import simpy

from nixfleet.core import protocol
from nixfleet.core.canonical import sha256_hex
from nixfleet.core.trust import Trust, parse_trust
from nixfleet.cp import endpoints
from nixfleet.cp.api import NOT_READY
from nixfleet.cp.endpoints import ClientCert, Peer
from nixfleet.cp.lifecycle import CHANNEL_REFS, Fetched, Lifecycle, UpstreamError, run_job
from nixfleet.cp.service import CpService, ServiceSettings
from nixfleet.cp.store import Store

from .clock import SimClock
from .network import json_bytes

if TYPE_CHECKING:
    from .world import World

log = logging.getLogger("fleet_sim.cp")
T = TypeVar("T")

TICK_SECS = 30.0
SWEEP_SECS = 30.0
POLL_SECS = 60.0
PRUNE_SECS = 3600.0
CN_SUFFIX = "fleet.sim"
"""`--agent-cn-suffix`: simulated agent certificates are `agent-<host>.fleet.sim`."""
HEADER = str(protocol.MAJOR)
"""The `X-Nixfleet-Protocol` every simulated agent sends."""

Job = Callable[[Lifecycle, datetime], object]


class MemoryCache:
    """The snapshot cache file, in memory: it survives crashes and the DB wipe."""

    where = "the simulated CP's disk"

    def __init__(self) -> None:
        self.pair: tuple[bytes, bytes] | None = None

    def load(self) -> tuple[bytes, bytes] | None:
        return self.pair

    def save(self, raw: bytes, sig: bytes) -> None:
        self.pair = (raw, sig)


class SimCp:
    def __init__(self, world: World, *, confirm_window_secs: int, agent_poll_secs: float) -> None:
        self.world = world
        self.env: simpy.Environment = world.env
        self.clock = SimClock(world.env, world.epoch)
        self.trust: Trust = parse_trust(world.forge.kit.trust())
        self.settings = ServiceSettings(
            agent_cn_suffix=CN_SUFFIX,
            confirm_window=timedelta(seconds=confirm_window_secs),
            agent_poll=timedelta(seconds=agent_poll_secs),
        )
        self.cache = MemoryCache()
        self.store: Store | None = None
        self.service: CpService | None = None
        self.lifecycle: Lifecycle | None = None
        self.up = False
        self.boots = 0
        for name, period, job in (
            ("tick", TICK_SECS, self._tick),
            ("sweep", SWEEP_SECS, self._sweep),
            ("poll", POLL_SECS, self._poll),
            ("prune", PRUNE_SECS, self._prune),
        ):
            self.env.process(self._every(name, period, job))

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Open (or reopen) the DB and prime, as `nixfleet-control-plane` starts."""
        if self.store is None:
            self.store = Store.open(":memory:")
        self.service = CpService(
            self.store,
            lambda: self.trust,
            self.settings,
            manifest_source=self.world.forge.manifest,
        )
        self.lifecycle = Lifecycle(
            self.service, cache=self.cache, build_time=self._build_time, upstream_label="forge"
        )
        self.boots += 1
        self._run("prime", lambda lc, now: lc.prime({CHANNEL_REFS: self._fetch()}, now=now))
        self.up = True
        self.world.record("cp-start", None, boot=self.boots, ready=self.service.ready)

    def crash(self) -> None:
        self.up = False
        self.service = None
        self.lifecycle = None
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

    # --- the forge, as the runtime fetches it ---------------------------------------------

    def _fetch(self) -> Fetched:
        forge = self.world.forge
        if not forge.up or forge.latest is None:
            return UpstreamError("GET fleet.resolved.json: connect failed (forge down)")
        return forge.latest.raw, forge.latest.sig

    def _build_time(self) -> tuple[bytes, bytes]:
        """The artifact baked into the CP's closure: one release behind the newest
        (the first deployment bakes the first release)."""
        forge = self.world.forge
        release = forge.build_time or forge.latest
        assert release is not None, "the CP starts after release 0"
        return release.raw, release.sig

    # --- requests (the aiohttp app's gates, then the handler's call) -------------------

    def request(self, route: str, cert: ClientCert, call: Callable[[CpService, Peer], T]) -> T:
        service = self.service
        if service is None:  # the process is down
            raise NOT_READY
        endpoints.admit(service, HEADER, strict=True)
        peer = endpoints.identify(service, cert)
        endpoints.authorize(peer, route)
        return call(service, peer)

    def checkin(self, cert: ClientCert, raw: bytes) -> bytes:
        def call(service: CpService, peer: Peer) -> bytes:
            return json_bytes(endpoints.checkin(service, peer, raw, now=self.clock.now()))

        return self.request(protocol.CHECKIN, cert, call)

    def confirm(self, cert: ClientCert, raw: bytes) -> int:
        def call(service: CpService, peer: Peer) -> int:
            return endpoints.confirm(service, peer, raw, now=self.clock.now())

        return self.request(protocol.CONFIRM, cert, call)

    def report(self, cert: ClientCert, raw: bytes) -> bytes:
        def call(service: CpService, peer: Peer) -> bytes:
            return json_bytes(endpoints.report(service, peer, raw, now=self.clock.now()))

        return self.request(protocol.REPORT, cert, call)

    def manifest(self, cert: ClientCert, rid: str) -> tuple[bytes, bytes | None]:
        """`GET /v1/rollouts/{rid}` and its `/sig`, in one go."""
        return self.request(protocol.ROLLOUT, cert, lambda service, _peer: service.manifest(rid))

    # --- timers -----------------------------------------------------------------------

    def _every(self, name: str, period: float, job: Job) -> Generator[Any, Any, None]:
        while True:
            yield self.env.timeout(period)
            if self.up:
                self._run(name, job)

    def _run(self, name: str, job: Job) -> None:
        """One lifecycle job, as the runtime runs it; a snapshot change is recorded."""
        service, lifecycle = self.service, self.lifecycle
        assert service is not None and lifecycle is not None
        before = service.snapshot
        run_job(name, lambda: job(lifecycle, self.clock.now()))
        after = service.snapshot
        if after is not None and after is not before:
            self.world.record(
                "snapshot", None, release=self._release_of(after.fleet_hash), source=after.source
            )

    def _release_of(self, fleet_hash: str) -> int | None:
        for release in reversed(self.world.forge.releases):
            if sha256_hex(release.raw) == fleet_hash:
                return release.number
        return None

    @staticmethod
    def _tick(lifecycle: Lifecycle, now: datetime) -> None:
        lifecycle.tick(now=now)

    def _sweep(self, lifecycle: Lifecycle, now: datetime) -> None:
        expired = lifecycle.sweep(now=now)
        if expired:
            self.world.record("sweep", None, rolled_back=expired)

    def _poll(self, lifecycle: Lifecycle, now: datetime) -> None:
        lifecycle.poll({CHANNEL_REFS: self._fetch()}, now=now)

    @staticmethod
    def _prune(lifecycle: Lifecycle, now: datetime) -> None:
        lifecycle.prune(now=now)
