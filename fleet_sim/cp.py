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

import contextlib
import logging
import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import simpy

from nixfleet.agent.config import DEFAULT_SWITCH_TIMEOUT_SECS
from nixfleet.core import protocol, wire
from nixfleet.core.canonical import sha256_hex
from nixfleet.core.errors import BadInput, NixfleetError
from nixfleet.core.timeutil import format_instant
from nixfleet.core.trust import Trust, parse_trust
from nixfleet.cp import config as cp_config
from nixfleet.cp import endpoints
from nixfleet.cp.api import NOT_READY, ApiError
from nixfleet.cp.endpoints import ClientCert, Peer
from nixfleet.cp.lifecycle import (
    CHANNEL_REFS,
    REVOCATIONS,
    Fetched,
    Lifecycle,
    UpstreamError,
    run_job,
)
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


FORGE_FAULTS = {
    "down": "HTTP 503",
    "hang": "timed out after 10 s",
    "unauthorized": "HTTP 401",
}
"""What the runtime's fetch (`nixfleet/cp/runtime.py`) says for each forge fault."""

POLL_FAILED = re.compile(
    r"(?P<upstream>[\w-]+): \S+ poll failed; retaining previous cache: (?P<reason>.*)$"
)
"""The CP's line for an upstream it fetched and refused (`Lifecycle._poll_failed`):
its snapshot kept, the reason (a VerifyError's `<reason>: <detail>`, or the fetch's)."""


class _Refusals(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.found: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = POLL_FAILED.search(record.getMessage())
        if m is not None:
            self.found.append((m["upstream"], m["reason"]))


@contextlib.contextmanager
def _poll_failures() -> Iterator[list[tuple[str, str]]]:
    """The CP's poll-failure lines logged within the block, as (upstream, reason)."""
    handler = _Refusals()
    logger = logging.getLogger("nixfleet.cp")
    logger.addHandler(handler)
    try:
        yield handler.found
    finally:
        logger.removeHandler(handler)


_ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", protocol.HEALTHZ),
    ("GET", protocol.READYZ),
    ("POST", protocol.ENROLL),
    ("POST", protocol.RENEW),
    ("GET", protocol.WHOAMI),
    ("POST", protocol.CHECKIN),
    ("POST", protocol.CONFIRM),
    ("POST", protocol.REPORT),
    ("GET", protocol.CHANNEL),
    ("GET", protocol.HOSTS),
    ("GET", protocol.ROLLOUTS),
    ("GET", protocol.ROLLOUT),
    ("GET", protocol.ROLLOUT_SIG),
    ("GET", protocol.METRICS),
)
"""The aiohttp app's routes (`build_app`), as (method, canonical route)."""
_UNSIMULATED = frozenset({protocol.ENROLL, protocol.RENEW, protocol.METRICS})


def _route(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    """The canonical route `path` matches and its `{name}` parameters."""
    parts = path.split("?", 1)[0].split("/")
    for verb, route in _ROUTES:
        pattern = route.split("/")
        if verb != method or len(pattern) != len(parts):
            continue
        params: dict[str, str] = {}
        for want, got in zip(pattern, parts, strict=True):
            if want.startswith("{") and want.endswith("}") and got:
                params[want[1:-1]] = got
            elif want != got:
                break
        else:
            return route, params
    return None


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
    def __init__(
        self,
        world: World,
        *,
        confirm_window_secs: int,
        agent_poll_secs: float,
        agent_switch_timeout_secs: float = DEFAULT_SWITCH_TIMEOUT_SECS,
    ) -> None:
        self.world = world
        self.env: simpy.Environment = world.env
        self.clock = SimClock(world.env, world.epoch)
        self.trust: Trust = parse_trust(world.forge.kit.trust())
        self.settings = ServiceSettings(
            agent_cn_suffix=CN_SUFFIX,
            confirm_window=timedelta(seconds=confirm_window_secs),
            agent_poll=timedelta(seconds=agent_poll_secs),
            health_failure=timedelta(seconds=world.config.health_failure_secs),
        )
        self.agent_switch_timeout_secs = agent_switch_timeout_secs
        self.configure(confirm_window_secs, agent_switch_timeout_secs)
        self.cache = MemoryCache()
        self.bake: Callable[[bytes], bytes] | None = None
        """Rewrites the baked artifact's bytes (a harness fault: one byte flipped)."""
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

    def configure(self, confirm_window_secs: int, agent_switch_timeout_secs: float) -> None:
        """Set the confirm window (`--confirm-deadline-secs`) and the agents' switch
        budget (`--agent-switch-timeout-secs`) for the next start, through the CP's own
        check: BadInput (the line `serve` exits 2 with) leaves the settings as they were."""
        problem = cp_config.confirm_window_problem(confirm_window_secs, agent_switch_timeout_secs)
        if problem is not None:
            raise BadInput(problem)
        window = timedelta(seconds=confirm_window_secs)
        self.settings = replace(self.settings, confirm_window=window)
        self.agent_switch_timeout_secs = agent_switch_timeout_secs

    def start(self) -> None:
        """Open (or reopen) the DB and prime, as `nixfleet-control-plane` starts."""
        if self.store is None:
            self.store = Store.open(":memory:")
        # Configured with `--revocations-artifact-url` when CI publishes a sidecar.
        sidecar = self.world.forge.revocations is not None
        self.service = CpService(
            self.store,
            lambda: self.trust,
            replace(self.settings, needs_revocations=sidecar),
            manifest_source=self.world.forge.manifest,
        )
        self.lifecycle = Lifecycle(
            self.service, cache=self.cache, build_time=self._build_time, upstream_label="forge"
        )
        self.boots += 1
        self._run("prime", lambda lc, now: lc.prime(self._fetch_all(), now=now))
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
        if forge.fault is not None:
            return UpstreamError(f"GET fleet.resolved.json: {FORGE_FAULTS[forge.fault]}")
        return forge.latest.raw, forge.latest.sig

    def _fetch_all(self) -> dict[str, Fetched]:
        """Every configured upstream, as the runtime's prime and poll fetch them."""
        fetched: dict[str, Fetched] = {CHANNEL_REFS: self._fetch()}
        sidecar = self.world.forge.revocations
        if sidecar is not None:
            fetched[REVOCATIONS] = self._fetch_sidecar("revocations.json", sidecar)
        return fetched

    def _fetch_sidecar(self, name: str, pair: tuple[bytes, bytes]) -> Fetched:
        forge = self.world.forge
        if not forge.up:
            return UpstreamError(f"GET {name}: connect failed (forge down)")
        if forge.fault is not None:
            return UpstreamError(f"GET {name}: {FORGE_FAULTS[forge.fault]}")
        return pair

    def _build_time(self) -> tuple[bytes, bytes]:
        """The artifact baked into the CP's closure: one release behind the newest
        (the first deployment bakes the first release)."""
        forge = self.world.forge
        release = forge.build_time or forge.latest
        assert release is not None, "the CP starts after release 0"
        raw = release.raw if self.bake is None else self.bake(release.raw)
        return raw, release.sig

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

    def call(
        self, method: str, path: str, cert: ClientCert | None, raw: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        """Any request a client could send, answered as the aiohttp app answers it
        (`nixfleet/cp/http.py`): the same gates, the same service call, the same error
        bodies (`endpoints.refusal`). Routes the simulator's hosts never use (enroll,
        renew, metrics) answer 501 here, saying so."""
        service = self.service
        if service is None:
            return 0, b"connection refused (the simulated CP is down)", {}
        found = _route(method, path)
        try:
            if found is None:
                raise ApiError(404, "not found", f"no route {method} {path}")
            route, params = found
            if route in _UNSIMULATED:
                raise ApiError(501, "not implemented", f"{route} is not simulated")
            if route.startswith("/v1/"):
                endpoints.admit(service, HEADER, strict=False)
                if route not in protocol.ANONYMOUS:
                    peer = endpoints.identify(service, cert)
                    endpoints.authorize(peer, route)
            answer = self._answer(service, route, params, cert, raw)
        except NixfleetError as exc:
            refused = endpoints.refusal(exc)
            headers = {"content-type": "application/json"}
            if refused.retry_after is not None:
                headers["Retry-After"] = str(refused.retry_after)
            return refused.status, json_bytes(refused.body()), headers
        if isinstance(answer, int):
            return answer, b"", {}
        if isinstance(answer, bytes):
            return 200, answer, {"content-type": "application/octet-stream"}
        return 200, json_bytes(answer), {"content-type": "application/json"}

    def _answer(
        self, service: CpService, route: str, params: dict[str, str], cert: ClientCert | None,
        raw: bytes,
    ) -> Any:  # fmt: skip
        now = self.clock.now()
        peer = endpoints.identify(service, cert) if route.startswith("/v1/") else None
        if route == protocol.HEALTHZ:
            return service.health()
        if route == protocol.READYZ:
            service.require_ready()
            return {"ready": True}
        assert peer is not None
        if route == protocol.WHOAMI:
            return {"cn": peer.cn, "issuedAt": format_instant(now)}
        if route == protocol.CHECKIN:
            return endpoints.checkin(service, peer, raw, now=now)
        if route == protocol.CONFIRM:
            return endpoints.confirm(service, peer, raw, now=now)
        if route == protocol.REPORT:
            return endpoints.report(service, peer, raw, now=now)
        if route == protocol.CHANNEL:
            return service.channel_info(params["name"])
        if route == protocol.HOSTS:
            entries = service.host_status(now=now)
            return {"hosts": [wire.dump_host_status_entry(e) for e in entries]}
        if route == protocol.ROLLOUTS:
            return {"rollouts": service.rollouts_in_flight()}
        body, sig = service.manifest(params["rid"])
        if route == protocol.ROLLOUT:
            return body
        if sig is None:
            raise ApiError(500, "internal", "manifest signature is missing")
        return sig

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
        with _poll_failures() as refused:
            run_job(name, lambda: job(lifecycle, self.clock.now()))
        for upstream, reason in refused:
            self.world.record("poll-failed", None, upstream=upstream, reason=reason)
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
        lifecycle.poll(self._fetch_all(), now=now)

    @staticmethod
    def _prune(lifecycle: Lifecycle, now: datetime) -> None:
        lifecycle.prune(now=now)
