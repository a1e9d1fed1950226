"""A simulated host: the real agent reducer (`AgentSession`) pumped by simpy.

`perform` carries out the same actions as the asyncio daemon, with simulated IO: a
`Network` call to the simulated CP, a binary-cache transfer, an activation that takes
time and may fail. The match ends in `assert_never`, like the daemon's.

What crosses the network is what the daemon sends: the checkin body from the shared
builder (`checkin.outgoing`), with the attestation and report signatures made by the
production `EvidenceSigner` over this host's own ed25519 key (the one the simulated
fleet declares as its pubkey), encoded and parsed by the wire codecs, under the
host's client certificate (`agent-<host>.fleet.sim`).
"""

from __future__ import annotations

import random
from collections.abc import Generator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, assert_never

import simpy

from nixfleet.agent.evidence import EvidenceSigner
from nixfleet.core import closure, wire
from nixfleet.core.agent import (
    Activate,
    AgentAction,
    AgentEvent,
    AgentSession,
    AgentState,
    Boot,
    Checkin,
    CheckinFailed,
    CheckinOk,
    ConfirmAnswered,
    ConfirmFailed,
    FetchClosure,
    FetchManifest,
    FiredAndPolled,
    ManifestFailed,
    ManifestOk,
    PersistedState,
    PersistState,
    PollTick,
    Report,
    ReportFailed,
    ReportSent,
    Rollback,
    RollbackDone,
    SendConfirm,
    Sleep,
    StatePersisted,
    SwitchFailed,
)
from nixfleet.core.canonical import load_json
from nixfleet.core.checkin import HostView, outgoing
from nixfleet.core.closure import ClosureHash
from nixfleet.core.errors import NixfleetError, Unreachable
from nixfleet.core.manifest_check import check_manifest
from nixfleet.core.wire import PROBE_FAIL, PROBE_PASS, PROBE_UNKNOWN, HealthProbe
from nixfleet.cp.endpoints import ClientCert
from nixfleet.cp.issuance import agent_cn

from .clock import SimClock
from .cp import CN_SUFFIX
from .fleetgen import host_key
from .network import json_bytes

if TYPE_CHECKING:
    from .world import World

AGENT_VERSION = "sim"
RESTART_SECS = 10.0
"""systemd's delay before it restarts an agent that exited (the unit's `RestartSec`)."""
CERT_AGE = timedelta(days=1)
"""How long before the run each host enrolled (its certificate's notBefore)."""


@dataclass(slots=True, kw_only=True)
class HostBehaviour:
    """What this host's hardware and closures do; faults change it at run time."""

    activation_secs: tuple[float, float] = (20.0, 60.0)
    rollback_secs: tuple[float, float] = (10.0, 30.0)
    switch_fails: bool = False
    """The new closure's switch-to-configuration exits non-zero."""
    unhealthy_after: int | None = None
    """Closures of this generation or later switch fine but fail their health probe."""
    probe_delay_secs: float = 0.0
    """After a switch the probe has no result (`unknown`) for this long."""
    closure_bytes: float = 200e6


class SimHost:
    def __init__(
        self, world: World, name: str, closure: ClosureHash, skew: timedelta, seed: int
    ) -> None:
        self.world = world
        self.env: simpy.Environment = world.env
        self.name = name
        self.rng = random.Random(seed)
        self.clock = SimClock(world.env, world.epoch, skew)
        self.cert = ClientCert(agent_cn(name, CN_SUFFIX), world.epoch - CERT_AGE)
        self.signer = EvidenceSigner(host_key(name))
        self.behaviour = HostBehaviour()
        self.profile: list[ClosureHash] = [closure]
        """System profile generations, oldest first."""
        self.generation = 0
        """Index of the profile's current generation (`nix-env --rollback` moves it)."""
        self.current: ClosureHash = closure
        """What the system runs (`/run/current-system`)."""
        self.switched_at = 0.0
        """When `current` last changed (a switch or a rollback)."""
        self.persisted: PersistedState | None = None
        self.session: AgentSession | None = None
        self.process: simpy.Process | None = None
        self.up = False

    # --- lifecycle --------------------------------------------------------------------

    def start(self, delay: float = 0.0) -> None:
        self.process = self.env.process(self._run(delay))

    def crash(self) -> None:
        """Kill the agent (not the host): its queue and memory go, the disk stays."""
        if self.process is not None and self.process.is_alive:
            self.process.interrupt("crash")
        self.up = False
        self.world.record("agent-crash", self.name)

    def _run(self, delay: float) -> Generator[Any, Any, None]:
        try:
            yield self.env.timeout(delay)
            state = AgentState.restore(
                hostname=self.name, agent_version=AGENT_VERSION, persisted=self.persisted
            )
            self.session = AgentSession(
                state,
                poll_interval_secs=self.world.poll_secs,
                jitter=lambda: self.rng.uniform(0.8, 1.2),
            )
            self.up = True
            self.world.record("agent-start", self.name, closure=self.current)
            self.session.feed(Boot(current_closure=self.running()), self.clock.now())
            while True:
                action = self.session.next_action()
                event = yield from self.perform(action)
                self.session.feed(event, self.clock.now())
        except simpy.Interrupt:
            return
        except SystemExit as exc:
            # The daemon exited (no fixed agent does; a mutant may): systemd's
            # `Restart=always` starts it again after RESTART_SECS.
            self.up = False
            self.world.record("agent-exit", self.name, status=exc.code)
            self.start(delay=RESTART_SECS)

    def running(self) -> ClosureHash:
        """What `/run/current-system` names, read the way the daemon reads it."""
        return closure.closure_hash_from_path(f"{closure.STORE_DIR}/{self.current}")

    def _probe(self) -> HealthProbe:
        """The host's one health probe, as the daemon's health checker reports it."""
        if self.env.now - self.switched_at < self.behaviour.probe_delay_secs:
            return HealthProbe(name="app", kind="http", status=PROBE_UNKNOWN)
        bad = self.behaviour.unhealthy_after
        failing = bad is not None and self.world.generation_of(self.name, self.current) >= bad
        return HealthProbe(name="app", kind="http", status=PROBE_FAIL if failing else PROBE_PASS)

    def _view(self) -> HostView:
        return HostView(
            current=self.running(),
            pending=None,
            uptime_secs=int(self.env.now),
            health_probes=(self._probe(),),
            health_check_mode=self.world.config.health_check_mode,
            sent_at=self.clock.now(),
        )

    # --- actions ---------------------------------------------------------------------

    def perform(self, action: AgentAction) -> Generator[Any, Any, AgentEvent]:
        world, name = self.world, self.name
        cp, net = world.cp, world.network
        match action:
            case Sleep(until=until):
                yield self.env.timeout(self.clock.seconds_until(until))
                return PollTick()
            case Checkin(request=request):
                started = self.env.now
                req = outgoing(request, self._view(), self.signer.attest)
                body = json_bytes(wire.dump_checkin_request(req))
                try:
                    reply = yield from net.call(
                        name, lambda: cp.reachable, lambda: cp.checkin(self.cert, body)
                    )
                    resp = wire.parse_checkin_response(
                        load_json(reply, source="checkin response"), source="checkin response"
                    )
                except NixfleetError as exc:
                    world.record("checkin-failed", name, reason=str(exc))
                    return CheckinFailed(reason=str(exc))
                target = resp.target
                world.record(
                    "checkin",
                    name,
                    latency=round(self.env.now - started, 6),
                    closure=req.current_generation.closure_hash,
                    target=target.closure_hash if target else None,
                    rollback=resp.rollback is not None,
                )
                if target is not None:
                    world.record(
                        "dispatch",
                        name,
                        rollout=target.rollout_id,
                        closure=target.closure_hash,
                        wave=target.wave_index,
                    )
                return CheckinOk(response=resp, current_closure=req.current_generation.closure_hash)
            case FetchManifest(rollout_id=rid, wave_index=wave):
                try:
                    manifest, sig = yield from net.call(
                        name, lambda: cp.reachable, lambda: cp.manifest(self.cert, rid)
                    )
                except NixfleetError as exc:
                    return ManifestFailed(kind="missing", reason=f"rollout {rid}: {exc}")
                checked = check_manifest(
                    manifest,
                    sig,
                    cp.trust,
                    rollout_id=rid,
                    hostname=name,
                    wave_index=wave,
                    now=self.clock.now(),
                )
                if isinstance(checked, ManifestOk):
                    # A simulated host keeps no manifest cache: every one comes from the CP.
                    world.record("manifest", name, rollout=rid, source="cp")
                return checked
            case FetchClosure(closure_hash=closure):
                return (yield from world.cache.fetch(self, closure))
            case Activate(closure_hash=closure):
                world.record("activate", name, closure=closure)
                # nix-env --set: a new generation unless it is the newest already.
                if self.profile[-1] != closure:
                    self.profile.append(closure)
                self.generation = len(self.profile) - 1
                yield self.env.timeout(self.rng.uniform(*self.behaviour.activation_secs))
                if self.behaviour.switch_fails:
                    world.record("activation-failed", name, closure=closure)
                    return SwitchFailed(phase="switch-poll-timeout", exit_code=1)
                self.current = closure
                self.switched_at = self.env.now
                world.record("activated", name, closure=closure, generation=self.generation)
                return FiredAndPolled()
            case SendConfirm(request=request):
                body = json_bytes(wire.dump_confirm_request(request))
                try:
                    status = yield from net.call(
                        name, lambda: cp.reachable, lambda: cp.confirm(self.cert, body)
                    )
                except Unreachable as exc:
                    world.record("confirm-failed", name, reason=str(exc))
                    return ConfirmFailed(reason=str(exc))
                except NixfleetError as exc:  # an HTTP error status (503 not ready, …)
                    status = exc.http_status
                world.record(
                    "confirm",
                    name,
                    rollout=request.rollout,
                    status=status,
                    closure=request.generation.closure_hash,
                )
                return ConfirmAnswered(status=status)
            case Rollback(reason=reason):
                yield self.env.timeout(self.rng.uniform(*self.behaviour.rollback_secs))
                before = self.current
                if self.generation == 0:
                    world.record("rollback-failed", name, reason=reason)
                    return RollbackDone(ok=False, phase="nix-env-rollback", exit_code=1)
                # nix-env --rollback, then the older generation's own switch.
                self.generation -= 1
                self.current = self.profile[self.generation]
                self.switched_at = self.env.now
                world.record(
                    "rollback", name, reason=reason, **{"from": before, "to": self.current}
                )
                return RollbackDone(ok=True, current_closure=self.current)
            case Report() as report:
                signed = self.signer.sign_report(
                    report.to_request(hostname=name, agent_version=AGENT_VERSION)
                )
                body = json_bytes(wire.dump_report_request(signed))
                try:
                    reply = yield from net.call(
                        name, lambda: cp.reachable, lambda: cp.report(self.cert, body)
                    )
                    wire.parse_report_accepted(
                        load_json(reply, source="report response"), source="report response"
                    )
                except NixfleetError as exc:
                    return ReportFailed(reason=str(exc))
                world.record("report", name, event=report.event, rollout=report.rollout)
                return ReportSent()
            case PersistState(state=state):
                self.persisted = state
                return StatePersisted()
            case _:
                assert_never(action)
