"""A simulated fleet: one clock, one CP, N hosts, a forge, a cache, a network, faults.

A run is a function of (config, seed): `run(config)` returns the same history, byte
for byte, for the same inputs. Nothing here reads the wall clock or the global RNG.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import simpy

from nixfleet.agent.config import DEFAULT_SWITCH_TIMEOUT_SECS
from nixfleet.core.agent import Phase
from nixfleet.core.closure import ClosureHash
from nixfleet.core.signing import ECDSA_P256

from .cache import SimCache
from .checkers import Final, HostFinal, RolloutFinal, Run
from .clock import SimClock
from .cp import SimCp
from .faults import Fault, compose
from .fleetgen import ChannelDecl, HostDecl, ReleaseKit, fake_closure, planned_channel, wave_plan
from .forge import SimForge
from .history import History
from .host import SimHost
from .network import Latency, Network

EPOCH = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
STABLE = "stable"
"""The fleet's own channel: `SimConfig.hosts` in `SimConfig.waves`."""


@dataclass(frozen=True, slots=True)
class SimChannel:
    """A channel besides `stable`: `hosts` hosts named `<name>-<i>`, in `waves` planned
    waves (0: all-at-once)."""

    name: str
    hosts: int = 1
    waves: int = 1

    def host_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(1, self.hosts + 1)]


@dataclass(kw_only=True)
class SimConfig:
    hosts: int = 100
    waves: int = 3
    policy: str = "rollback-and-halt"
    seed: int = 1
    duration: float = 6 * 3600.0
    """Upper bound of simulated seconds."""
    poll_secs: float = 60.0
    soak_minutes: int = 0
    confirm_window_secs: int = 360
    agent_switch_timeout_secs: float = DEFAULT_SWITCH_TIMEOUT_SECS
    """The agents' switch budget the CP is told (`--agent-switch-timeout-secs`); the
    CP refuses a confirm window shorter than it + 10 s. Simulated switches are not cut
    off at it."""
    release_at: float = 120.0
    """When CI publishes the new release (generation 1); generation 0 runs at start."""
    later_releases_at: tuple[float, ...] = ()
    """When CI publishes generations 2, 3, … (absolute simulated seconds)."""
    activation_secs: tuple[float, float] = (20.0, 60.0)
    latency: Latency = field(default_factory=Latency)
    loss: float = 0.0
    bandwidth: float = 100e6
    faults: Sequence[Fault] = ()
    stop_when_settled: bool = True
    settle_polls: int = 5
    epoch: datetime = EPOCH
    release_key: str = "ed25519"
    """CI's release key; `ecdsa-p256` signs every release after 0 high-s (`ReleaseKit.high_s`)."""
    installed_signed_ago: float = 0.0
    """How long before the start release 0 was signed (seconds)."""
    health_check_mode: str = "enforce"
    """The agents' health-check mode, sent with every checkin."""
    health_failure_secs: float = 60.0
    """The CP's H11 threshold (`--health-failure-secs`)."""
    channels: tuple[SimChannel, ...] = ()
    """Channels besides `stable`."""
    channel_edges: tuple[tuple[str, str], ...] = ()
    """Fleet `channelEdges` as (gates, gated)."""

    def host_names(self) -> list[str]:
        """The `stable` channel's hosts."""
        width = len(str(self.hosts))
        return [f"host-{i:0{width}d}" for i in range(1, self.hosts + 1)]

    def channel_of(self) -> dict[str, str]:
        """Every host → its channel, `stable`'s hosts first."""
        out = dict.fromkeys(self.host_names(), STABLE)
        for ch in self.channels:
            out.update(dict.fromkeys(ch.host_names(), ch.name))
        return out

    def gated_by(self, channel: str) -> tuple[str, ...]:
        return tuple(gates for gates, gated in self.channel_edges if gated == channel)

    def wave_plan(self) -> list[list[str]]:
        return wave_plan(self.host_names(), self.waves)


class World:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.env = simpy.Environment()
        self.epoch = config.epoch
        self.clock = SimClock(self.env, config.epoch)
        self.rng = random.Random(config.seed)
        self.fault_rng = random.Random(self.rng.getrandbits(64))
        self.history = History()
        self.poll_secs = config.poll_secs
        self.forge = SimForge(kit=ReleaseKit(algorithm=config.release_key))
        self.cache = SimCache(
            self.env, random.Random(self.rng.getrandbits(64)), bandwidth=config.bandwidth
        )
        self.network = Network(
            self.env,
            random.Random(self.rng.getrandbits(64)),
            latency=config.latency,
            loss=config.loss,
        )
        self.waves = config.wave_plan()
        self.channel_of = config.channel_of()
        self.hosts: dict[str, SimHost] = {}
        for name in self.channel_of:
            host = SimHost(
                self,
                name,
                ClosureHash(fake_closure(name, 0)),
                skew=self.clock.skew,
                seed=self.rng.getrandbits(64),
            )
            host.behaviour.activation_secs = config.activation_secs
            self.hosts[name] = host
        self.cp = SimCp(
            self,
            confirm_window_secs=config.confirm_window_secs,
            agent_switch_timeout_secs=config.agent_switch_timeout_secs,
            agent_poll_secs=config.poll_secs,
        )
        self.faults = compose(config.faults)
        self.generation = 0
        self.declared: dict[str, int] = {}
        """Host → the release generation of the closure the newest release declares."""
        self.settled_at: float | None = None

    def record(self, kind: str, host: str | None, **detail: Any) -> None:
        self.history.record(self.env.now, kind, host, **detail)

    # --- CI ----------------------------------------------------------------------------

    def release(
        self,
        generation: int,
        keep: Collection[str] = (),
        *,
        signed_at: datetime | None = None,
        freshness_window_minutes: int | None = None,
    ) -> None:
        """Publish `generation`; hosts in `keep` keep their previously declared closure.
        `signed_at` defaults to now; the channel's freshnessWindow to ChannelDecl's."""
        self.generation = generation
        for name in self.hosts:
            if name not in keep or name not in self.declared:
                self.declared[name] = generation
        hosts = {
            name: HostDecl(channel=self.channel_of[name], closure=self.target(name))
            for name in self.hosts
        }
        rel = self.forge.publish(
            hosts,
            signed_at=signed_at or self.clock.now(),
            channels=self._channels(freshness_window_minutes),
            on_health_failure=self.config.policy,
        )
        detail: dict[str, Any] = {"rollout": rel.rollout_ids.get(STABLE)}
        if self.config.channels:
            detail["rollouts"] = dict(rel.rollout_ids)
        self.record("release", None, release=rel.number, **detail)

    def _channels(self, freshness_window_minutes: int | None) -> dict[str, ChannelDecl]:
        config = self.config
        decls = {
            STABLE: ChannelDecl(
                waves=self.waves,
                soak_minutes=config.soak_minutes,
                gated_by=config.gated_by(STABLE),
            )
        }
        for ch in config.channels:
            decls[ch.name] = planned_channel(
                ch.host_names(),
                ch.waves,
                soak_minutes=config.soak_minutes,
                gated_by=config.gated_by(ch.name),
            )
        if freshness_window_minutes is None:
            return decls
        return {
            name: replace(decl, freshness_window_minutes=freshness_window_minutes)
            for name, decl in decls.items()
        }

    def target(self, name: str) -> ClosureHash:
        return ClosureHash(fake_closure(name, self.declared.get(name, self.generation)))

    def generation_of(self, name: str, closure: str) -> int:
        """Which release generation a host's closure belongs to (-1: unknown)."""
        for gen in range(self.generation, -1, -1):
            if fake_closure(name, gen) == closure:
                return gen
        return -1

    @property
    def rollout_id(self) -> str | None:
        latest = self.forge.latest
        return latest.rollout_ids.get(STABLE) if latest else None

    # --- running -----------------------------------------------------------------------

    def _ci(self) -> Any:
        times = (self.config.release_at, *self.config.later_releases_at)
        for generation, at in enumerate(times, start=1):
            yield self.env.timeout(max(0.0, at - self.env.now))
            self.release(generation)

    def settled(self) -> bool:
        """The newest rollout converged or halted, and no agent is mid-activation."""
        service, rid = self.cp.service, self.rollout_id
        if service is None or service.store is None or rid is None or self.generation < 1:
            return False
        ro = service.store.rollout(rid)
        if ro is None or (ro.terminal_at is None and ro.state != "Halted"):
            return False
        return all(
            h.session is None or h.session.state.phase in (Phase.IDLE,)
            for h in self.hosts.values()
            if h.up
        )

    def _watch(self, done: simpy.Event) -> Any:
        while True:
            yield self.env.timeout(self.poll_secs)
            if self.settled():
                self.settled_at = self.env.now
                self.record("settled", None)
                yield self.env.timeout(self.config.settle_polls * self.poll_secs)
                done.succeed()
                return

    # --- what checkers see ------------------------------------------------------------

    def final(self) -> Final:
        """The hosts' running systems and the CP's rollout tables, as any backend
        reports them (no simulator object escapes)."""
        hosts = {
            name: HostFinal(
                current=str(h.current),
                target=str(self.target(name)),
                reachable=h.up and name not in self.network.cut,
            )
            for name, h in self.hosts.items()
        }
        return Final(hosts=hosts, rollouts=self._rollouts(), waves=self.waves)

    def _rollouts(self) -> list[RolloutFinal]:
        store = self.cp.store
        if store is None:
            return []
        states: dict[str, dict[str, str]] = {}
        for row in store.participation_rows():
            states.setdefault(row.rollout_id, {})[row.hostname] = row.host_state
        # Release order; within a release `stable`'s rollout last (`Final.rollout`).
        order: dict[str, tuple[int, int]] = {}
        for i, e in enumerate(self.history.of("release")):
            order.update(dict.fromkeys(map(str, e.detail.get("rollouts", {}).values()), (i, 0)))
            order[str(e.detail.get("rollout"))] = (i, 1)
        rows = sorted(store.rollout_rows(), key=lambda r: order.get(r.rollout_id, (-1, 0)))
        return [
            RolloutFinal(
                rollout_id=ro.rollout_id,
                state=ro.state,
                current_wave=ro.current_wave,
                terminal=ro.terminal_at is not None,
                host_states=states.get(ro.rollout_id, {}),
            )
            for ro in rows
        ]

    def as_run(self) -> Run:
        return Run(
            backend="sim", history=self.history, final=self.final(), poll_secs=self.poll_secs
        )

    # --- running -------------------------------------------------------------------------

    def boot(self) -> None:
        """Release 0 installed, the CP started, every agent started within one poll."""
        logging.getLogger("nixfleet.cp").setLevel(logging.WARNING)
        ago = timedelta(seconds=self.config.installed_signed_ago)
        self.release(0, signed_at=self.clock.now() - ago)
        # The installed release happened to be signed low-s; every later one high-s.
        self.forge.kit.high_s = self.config.release_key == ECDSA_P256
        self.cp.start()
        for host in self.hosts.values():
            host.start(delay=self.rng.uniform(0, self.poll_secs))

    def run(self) -> World:
        self.boot()
        self.env.process(self._ci())
        for fault in self.faults:
            fault.schedule(self)
        done = self.env.event()
        if self.config.stop_when_settled:
            self.env.process(self._watch(done))
        self.env.run(until=simpy.AnyOf(self.env, [done, self.env.timeout(self.config.duration)]))
        self.record("end", None)
        return self
