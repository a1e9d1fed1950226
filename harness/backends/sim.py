"""The `sim` backend: the facade over the simpy world (fleet_sim), which runs the
production cores and `CpService` over real SQLite.

Waiting advances simulated time; nothing sleeps. The mutant is applied in-process for
the whole run. Scenario shapes are taken as they are (`shape.hosts` hosts).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from fleet_sim.history import History
from fleet_sim.world import SimConfig, World
from harness.fleet import (
    CALL,
    FAULT,
    FORGE_MODES,
    OPERATOR,
    Final,
    NotAvailable,
    Reply,
    Shape,
    wait_loop,
)
from harness.mutants import injected
from nixfleet.cp.endpoints import ClientCert
from nixfleet.cp.issuance import operator_cn

POLL_SECS = 60.0
OPERATOR_CERT_AGE = timedelta(days=1)
WAIT_STEP_SECS = 5.0
"""How often a `wait_until` predicate is asked, in simulated seconds."""


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
    )


class SimCpHandle:
    def __init__(self, world: World) -> None:
        self.world = world

    def stop(self) -> None:
        self.world.cp.crash()  # a simulated stop loses what a SIGTERM would: memory

    def start(self) -> None:
        self.world.cp.start()

    def crash(self) -> None:
        self.world.cp.crash()

    def wipe(self) -> None:
        self.world.cp.wipe_db()

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

    @property
    def poll_secs(self) -> float:
        return self.world.poll_secs

    def polls(self, n: float) -> float:
        return n * self.world.poll_secs

    @property
    def confirm_window(self) -> float:
        return float(self.world.config.confirm_window_secs)

    def now(self) -> float:
        return float(self.world.env.now)

    # --- CI and the hosts ----------------------------------------------------------------

    def release(self, *, failing: Iterable[str] = (), unhealthy: Iterable[str] = ()) -> int:
        failing, unhealthy = set(failing), set(unhealthy)
        generation = self.world.generation + 1
        for name, host in self.world.hosts.items():
            host.behaviour.switch_fails = name in failing
            host.behaviour.unhealthy_after = generation if name in unhealthy else None
        self.world.release(generation)
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
        if mode not in FORGE_MODES:
            raise ValueError(f"forge mode {mode!r} not in {FORGE_MODES}")
        self.world.forge.fault = None if mode == "ok" else mode
        self.world.record(FAULT, None, fault="forge", phase="heal" if mode == "ok" else mode)

    def skew_clock(self, host: str, secs: float) -> None:
        self.world.hosts[host].clock.skew = timedelta(seconds=secs)
        self.world.record(FAULT, host, fault="clock-skew", phase="invoke", secs=secs)

    def slow_activation(self, hosts: Iterable[str], secs: float) -> None:
        for name in hosts:
            self.world.hosts[name].behaviour.activation_secs = (secs, secs)

    def kill_agent(self, host: str) -> None:
        self.world.hosts[host].crash()

    def start_agent(self, host: str) -> None:
        self.world.hosts[host].start()

    # --- observing -----------------------------------------------------------------------

    def current(self, host: str) -> str | None:
        return str(self.world.hosts[host].current)

    def target(self, host: str) -> str | None:
        return str(self.world.target(host))

    def converged(self, hosts: Iterable[str] | None = None) -> bool:
        names = self.hosts if hosts is None else hosts
        return all(self.current(h) == self.target(h) for h in names)

    def call(self, method: str, path: str, *, as_: str | None, body: object = None) -> Reply:
        if as_ is None:
            cert = None
        elif as_ == OPERATOR:
            cert = ClientCert(operator_cn("harness", "sim"), self.world.epoch - OPERATOR_CERT_AGE)
        else:
            cert = self.world.hosts[as_].cert
        raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body else b""
        status, answer, headers = self.world.cp.call(method, path, cert, raw)
        caller = None if as_ in (None, OPERATOR) else as_
        self.world.record(CALL, caller, method=method, path=path, as_=as_, status=status)
        return Reply(status, answer, headers)

    def operator(self, cmd: str) -> str:
        raise NotAvailable("the simulated CP has no host to run a shell on (use --backend local)")

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
