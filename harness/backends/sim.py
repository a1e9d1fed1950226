"""The `sim` backend: the facade over the simpy world (fleet_sim), which runs the
production cores and `CpService` over real SQLite.

Waiting advances simulated time; nothing sleeps. The mutant is applied in-process for
the whole run. Scenario shapes are taken as they are (`shape.hosts` hosts).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from fleet_sim.cp import CN_SUFFIX
from fleet_sim.fleetgen import Signer, fake_closure
from fleet_sim.history import History
from fleet_sim.world import SimChannel, SimConfig, World
from harness.fleet import (
    CACHE_MODES,
    CALL,
    FAULT,
    FORGE_MODES,
    OPERATOR,
    REVOKE,
    TAMPER_MODES,
    CpExited,
    Final,
    HostDiagnosis,
    NotAvailable,
    Reply,
    Shape,
    check_mode,
    flip_closure_digit,
    wait_loop,
)
from harness.mutants import injected
from nixfleet.core.closure import ClosureHash
from nixfleet.core.errors import BadInput
from nixfleet.core.timeutil import format_instant
from nixfleet.cp.endpoints import ClientCert
from nixfleet.cp.issuance import agent_cn, operator_cn

POLL_SECS = 60.0
OPERATOR_CERT_AGE = timedelta(days=1)
WAIT_STEP_SECS = 5.0
"""How often a `wait_until` predicate is asked, in simulated seconds."""


NO_ENROLL = (
    "the simulated CP does not simulate /v1/enroll nor /v1/agent/renew (use --backend local)"
)


def sim_config(shape: Shape) -> SimConfig:
    return SimConfig(
        hosts=shape.hosts,
        waves=shape.waves,
        policy=shape.policy,
        seed=shape.seed,
        poll_secs=POLL_SECS,
        soak_minutes=shape.soak_minutes,
        confirm_window_secs=round(shape.confirm_window_polls * POLL_SECS),
        stop_when_settled=False,
        release_key=shape.release_key,
        installed_signed_ago=shape.installed_signed_ago,
        health_check_mode=shape.probe_mode,
        health_failure_secs=(shape.health_failure_polls or 1.0) * POLL_SECS,
        channels=tuple(SimChannel(c.name, c.hosts, c.waves) for c in shape.channels),
        channel_edges=shape.channel_edges,
    )


class SimCpHandle:
    def __init__(self, world: World) -> None:
        self.world = world

    def stop(self) -> None:
        self.world.cp.crash()  # a simulated stop loses what a SIGTERM would: memory

    def start(self) -> None:
        """Never raises CpExited: the simulated CP's DB and trust are always sound."""
        self.world.cp.start()

    def crash(self) -> None:
        self.world.cp.crash()

    def corrupt_baked(self, on: bool = True) -> None:
        self.world.cp.bake = flip_closure_digit if on else None

    def wipe(self) -> None:
        self.world.cp.wipe_db()

    def reconfigure(self, *, confirm_window: float, switch_timeout: float) -> None:
        """The simulated CP's own check (`SimCp.configure`) refuses as `serve` does;
        simulated agents are not restarted (they never cut a switch off)."""
        cp = self.world.cp
        cp.crash()
        try:
            cp.configure(round(confirm_window), switch_timeout)
        except BadInput as exc:
            raise CpExited(2, f"nixfleet-control-plane: {exc}", 0.0) from None
        cp.start()

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        store = self.world.cp.store
        if store is None:
            raise NotAvailable("the simulated CP has no database (wiped and not restarted)")
        return [tuple(row) for row in store.connection.execute(query).fetchall()]


class SimFleet:
    backend = "sim"

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.world = World(sim_config(shape))
        self.cp = SimCpHandle(self.world)
        self._revoked: dict[str, tuple[datetime, str]] = {}
        if shape.revocations_sidecar:
            self.world.forge.publish_revocations({}, signed_at=self.world.clock.now())
        self.world.boot()
        # As a real fleet is handed over: running release 0, every agent checked in.
        self.sleep(self.world.poll_secs)

    @property
    def history(self) -> History:
        return self.world.history

    @property
    def hosts(self) -> Sequence[str]:
        return sorted(self.world.hosts)

    @property
    def waves(self) -> Sequence[Sequence[str]]:
        return self.world.waves

    def hosts_of(self, channel: str) -> Sequence[str]:
        return sorted(h for h, c in self.world.channel_of.items() if c == channel)

    @property
    def poll_secs(self) -> float:
        return self.world.poll_secs

    def polls(self, n: float) -> float:
        return n * self.world.poll_secs

    @property
    def confirm_window(self) -> float:
        return self.world.cp.settings.confirm_window.total_seconds()

    @property
    def switch_timeout(self) -> float:
        return self.world.cp.agent_switch_timeout_secs

    def now(self) -> float:
        return float(self.world.env.now)

    # --- CI and the hosts ----------------------------------------------------------------

    def release(
        self,
        *,
        failing: Iterable[str] = (),
        unhealthy: Iterable[str] = (),
        keep: Iterable[str] = (),
    ) -> int:
        failing, unhealthy = set(failing), set(unhealthy)
        generation = self.world.generation + 1
        self.world.release(generation, keep=set(keep))
        for name, host in self.world.hosts.items():
            host.behaviour.switch_fails = name in failing
            # The declared closure's generation: a kept closure is an older one.
            declared = self.world.declared[name]
            host.behaviour.unhealthy_after = declared if name in unhealthy else None
        return generation

    def publish(
        self,
        *,
        signed_at: float = 0.0,
        freshness_window_minutes: int | None = None,
        tamper: str | None = None,
    ) -> int:
        if tamper is not None:
            check_mode("tamper", tamper, TAMPER_MODES)
        world = self.world
        generation = world.generation + 1
        for host in world.hosts.values():
            host.behaviour.switch_fails = False
            host.behaviour.unhealthy_after = None
        at = world.clock.now() + timedelta(seconds=signed_at)
        # Signed and tampered within one simulated instant: the CP never sees it whole.
        world.release(generation, signed_at=at, freshness_window_minutes=freshness_window_minutes)
        if tamper is not None:
            world.forge.tamper(tamper)
        return generation

    def _fault(
        self, name: str, hosts: Sequence[str], duration: float, undo: Callable[[], None]
    ) -> None:
        world = self.world
        world.record(FAULT, None, fault=name, phase="invoke", hosts=len(hosts))

        def heal() -> Generator[Any, Any, None]:
            yield world.env.timeout(duration)
            undo()
            world.record(FAULT, None, fault=name, phase="heal")

        world.env.process(heal())

    def partition(self, hosts: Iterable[str], duration: float) -> None:
        cut = sorted(hosts)
        self.world.network.cut.update(cut)
        self._fault(
            "partition", cut, duration, lambda: self.world.network.cut.difference_update(cut)
        )

    def forge_fault(self, mode: str) -> None:
        check_mode("forge mode", mode, FORGE_MODES)
        self.world.forge.fault = None if mode == "ok" else mode
        self.world.record(FAULT, None, fault="forge", phase="heal" if mode == "ok" else mode)

    def forge_trust(self, how: str) -> None:
        raise NotAvailable("the simulated forge has no TLS to trust (use --backend local)")

    def cache_fault(self, mode: str) -> None:
        check_mode("cache mode", mode, CACHE_MODES)
        self.world.cache.up = mode == "ok"
        self.world.record(FAULT, None, fault="cache", phase="heal" if mode == "ok" else mode)

    def revoke(self, hosts: Iterable[str], *, reason: str = "compromised") -> None:
        if not self.shape.revocations_sidecar:
            raise NotAvailable("revoke needs Shape(revocations_sidecar=True)")
        at = self.world.clock.now()
        for name in sorted(set(hosts)):
            self._revoked[name] = (at, reason)
            self.world.record(REVOKE, name, reason=reason, source="sidecar")
        self.world.forge.publish_revocations(self._revoked, signed_at=at)

    def skew_clock(self, host: str, secs: float) -> None:
        self.world.hosts[host].clock.skew = timedelta(seconds=secs)
        self.world.record(FAULT, host, fault="clock-skew", phase="invoke", secs=secs)

    def slow_activation(self, hosts: Iterable[str], secs: float) -> None:
        for name in hosts:
            self.world.hosts[name].behaviour.activation_secs = (secs, secs)

    def switch_by_hand(self, host: str) -> str:
        h, declared = self.world.hosts[host], str(self.world.target(host))
        other = fake_closure(host, f"{declared}/workstation").split("-", 1)[0]
        built = ClosureHash(f"{other}-{declared.split('-', 1)[1]}")
        h.profile.append(built)
        h.generation = len(h.profile) - 1
        h.current, h.switched_at = built, self.world.env.now
        self.world.record(FAULT, host, fault="switch-by-hand", phase="invoke", closure=built)
        return str(built)

    def slow_probes(self, hosts: Iterable[str], secs: float) -> None:
        for name in hosts:
            self.world.hosts[name].behaviour.probe_delay_secs = secs

    def kill_agent(self, host: str) -> None:
        self.world.hosts[host].crash()

    def start_agent(self, host: str) -> None:
        self.world.hosts[host].start()

    # --- observing -----------------------------------------------------------------------

    def current(self, host: str) -> str | None:
        return str(self.world.hosts[host].current)

    def target(self, host: str) -> str | None:
        return str(self.world.target(host))

    def generations(self, host: str) -> int:
        return len(self.world.hosts[host].profile)

    def dispatch_record(self, host: str) -> Mapping[str, str] | None:
        persisted = self.world.hosts[host].persisted
        d = persisted.last_dispatched if persisted is not None else None
        if d is None:
            return None
        return {
            "closure": str(d.closure_hash),
            "rollout": d.target.rollout_id,
            "dispatched_at": format_instant(d.dispatched_at),
        }

    def diagnose_host(self, host: str) -> HostDiagnosis:
        raise NotAvailable("the simulated hosts have no unit, journal or shell (use local or ssh)")

    def converged(self, hosts: Iterable[str] | None = None) -> bool:
        names = self.hosts if hosts is None else hosts
        return all(self.current(h) == self.target(h) for h in names)

    def call(
        self,
        method: str,
        path: str,
        *,
        as_: str | None,
        body: object = None,
        cert: str | None = None,
    ) -> Reply:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body else b""
        client = self._client_cert(as_, cert)
        status, answer, headers = self.world.cp.call(method, path, client, raw)
        caller = None if as_ in (None, OPERATOR) else as_
        self.world.record(CALL, caller, method=method, path=path, as_=as_, status=status)
        return Reply(status, answer, headers)

    def _client_cert(self, as_: str | None, pem: str | None) -> ClientCert | None:
        """What the simulated TLS layer verifies of the caller's certificate."""
        if pem is not None:
            x = x509.load_pem_x509_certificate(pem.encode())
            cns = x.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            return ClientCert(str(cns[0].value) if cns else None, x.not_valid_before_utc)
        if as_ is None:
            return None
        if as_ == OPERATOR:
            return ClientCert(operator_cn("harness", "sim"), self.world.epoch - OPERATOR_CERT_AGE)
        if as_ in self.world.hosts:
            return self.world.hosts[as_].cert
        # A host outside the fleet: a certificate the fleet CA issues for it now.
        return ClientCert(agent_cn(as_, CN_SUFFIX), self.world.cp.clock.now())

    def operator(self, cmd: str) -> str:
        raise NotAvailable("the simulated CP has no host to run a shell on (use --backend local)")

    def release_signer(self) -> Signer:
        raise NotAvailable("the simulated CI signs with a software key (use --backend tpm)")

    # --- enrollment: the simulated CP has no /v1/enroll nor /v1/agent/renew -------------

    def mint_token(self, host: str, *, key_of: str | None = None, org_key: int = 0) -> Any:
        raise NotAvailable(NO_ENROLL)

    def csr(self, host: str, *, key_of: str | None = None) -> str:
        raise NotAvailable(NO_ENROLL)

    def publish_nonces(self, entries: Iterable[Mapping[str, str]] | None) -> None:
        raise NotAvailable(NO_ENROLL)

    def set_org_root(self, current: int, previous: int | None) -> None:
        raise NotAvailable(NO_ENROLL)

    def deploy_token(self, host: str, token: Any) -> None:
        raise NotAvailable(NO_ENROLL)

    def expire_cert(self, host: str) -> None:
        raise NotAvailable("the simulated hosts hold no certificate files (use --backend local)")

    # --- waiting -------------------------------------------------------------------------

    def sleep(self, secs: float) -> None:
        self.world.env.run(until=self.world.env.now + secs)

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        wait_loop(
            predicate,
            timeout,
            what,
            now=self.now,
            advance=self.sleep,
            interval=WAIT_STEP_SECS,
            seen=self._seen,
        )

    def _seen(self) -> str:
        """How far the fleet got: hosts on target, cut off, with their agent down."""
        world = self.world
        on = sum(1 for h in world.hosts if self.current(h) == self.target(h))
        down = sum(1 for h in world.hosts.values() if not h.up)
        return (
            f"{on}/{len(world.hosts)} hosts on target, {len(world.network.cut)} cut off, "
            f"{down} agents down, CP {'up' if world.cp.reachable else 'down'}"
        )

    def final(self) -> Final:
        return self.world.final()


@contextlib.contextmanager
def open_fleet(shape: Shape, workdir: Path, mutant: str | None) -> Iterator[SimFleet]:
    del workdir  # the simulated fleet keeps everything in memory
    with injected(mutant) if mutant is not None else contextlib.nullcontext():
        yield SimFleet(shape)
