"""The agent's asyncio shell: pump the `AgentSession`, perform its actions.

    action = session.next_action()        # an action, or Sleep(until=…)
    event = await runtime.perform(action) # through the ports below
    session.feed(event, clock.now())

The shell decides nothing about the host's lifecycle: the reducer does. It only
observes what the core cannot know (the running system as its link shows it at checkin
time, uptime, probe results, the pending generation) for `checkin.outgoing`, which the
simulated host calls too, signs (attestation, reports), keeps the client certificate
fresh before a checkin, and keeps reports that could not be delivered to send them, in
order, before the next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol, assert_never

from nixfleet.core.agent import AgentSession
from nixfleet.core.agent_actions import (
    Activate,
    AgentAction,
    Checkin,
    FetchClosure,
    FetchManifest,
    PersistState,
    Report,
    Rollback,
    SendConfirm,
    Sleep,
)
from nixfleet.core.agent_events import (
    ActivationOutcome,
    AgentEvent,
    Boot,
    CheckinFailed,
    CheckinOk,
    ConfirmAnswered,
    ConfirmFailed,
    FetchDone,
    FetchFailed,
    ManifestFailed,
    ManifestOk,
    PollTick,
    ReportFailed,
    ReportSent,
    RollbackDone,
    StatePersisted,
)
from nixfleet.core.agent_state import PersistedState
from nixfleet.core.checkin import HostView, outgoing
from nixfleet.core.closure import ClosureHash
from nixfleet.core.errors import PeerError, Unreachable
from nixfleet.core.wire import (
    RENEWAL_FAILED,
    CheckinRequest,
    CheckinResponse,
    ConfirmRequest,
    HealthProbe,
    ReportAccepted,
    ReportRequest,
)

from .evidence import EvidenceSigner

log = logging.getLogger("nixfleet.agent")

OUTBOX_LIMIT = 256
RENEWAL_REPORT_INTERVAL = timedelta(hours=1)
"""A failing renewal is retried every checkin but reported at most this often."""


# --- ports (typing.Protocol beside their consumer) -------------------------------------


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """Wall-clock UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class CpTransport(Protocol):
    """Agent-to-CP calls; raises Unreachable if no HTTP answer comes, PeerError for an
    answer it cannot use."""

    async def checkin(self, req: CheckinRequest) -> CheckinResponse: ...

    async def confirm(self, req: ConfirmRequest, endpoint: str) -> int: ...

    async def report(self, req: ReportRequest) -> ReportAccepted: ...


class Activator(Protocol):
    """The host's Nix: every failure comes back as an event, nothing raises."""

    async def fetch(self, closure: ClosureHash) -> FetchDone | FetchFailed: ...

    async def activate(self, closure: ClosureHash) -> ActivationOutcome: ...

    async def rollback(self) -> RollbackDone: ...

    def current_system(self) -> ClosureHash | None: ...

    def booted_system(self) -> ClosureHash | None: ...

    def profile_system(self) -> ClosureHash | None: ...


class Manifests(Protocol):
    async def fetch(
        self, rollout_id: str, wave_index: int, now: datetime
    ) -> ManifestOk | ManifestFailed: ...


class StateStore(Protocol):
    """The state dir; raises OSError if it cannot be written."""

    def write(self, state: PersistedState) -> list[str]: ...


class Health(Protocol):
    @property
    def mode(self) -> str | None: ...

    def snapshot(self) -> tuple[HealthProbe, ...]: ...

    def rerun(self) -> None:
        """The running system changed: results so far describe the previous one."""
        ...


class CertKeeper(Protocol):
    async def reenroll_if_expired(self, now: datetime) -> str | None:
        """Re-enrol if the client certificate has expired; the cause while it cannot be
        used, or None."""
        ...

    async def renew_if_due(self, now: datetime) -> str | None:
        """Renew the client certificate if due; the failure reason, or None."""
        ...


# --- the pump ----------------------------------------------------------------------------


class AgentRuntime:
    def __init__(
        self,
        session: AgentSession,
        *,
        hostname: str,
        agent_version: str,
        clock: Clock,
        transport: CpTransport,
        activator: Activator,
        manifests: Manifests,
        state: StateStore,
        signer: EvidenceSigner,
        health: Health,
        certs: CertKeeper | None = None,
        boot_id: str = "",
        uptime: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.session = session
        self.hostname = hostname
        self.agent_version = agent_version
        self.clock = clock
        self.transport = transport
        self.activator = activator
        self.manifests = manifests
        self.state = state
        self.signer = signer
        self.health = health
        self.certs = certs
        self.boot_id = boot_id
        self.uptime = uptime
        self._outbox: deque[ReportRequest] = deque()
        self._renewal_reported_at: datetime | None = None
        self._drift_logged: ClosureHash | None = None
        self._stop = asyncio.Event()

    def boot(self, current: ClosureHash) -> None:
        log.info("boot current=%s boot_id=%s", current, self.boot_id or "-")
        self.session.feed(Boot(current_closure=current, boot_id=self.boot_id), self.clock.now())

    async def run(self, stop: asyncio.Event) -> None:
        """Pump until `stop` is set (after the action in flight, or during a sleep)."""
        self._stop = stop
        while not stop.is_set():
            action = self.session.next_action()
            event = await self.perform(action)
            if event is None:
                break
            self.session.feed(event, self.clock.now())

    async def perform(self, action: AgentAction) -> AgentEvent | None:
        match action:
            case Sleep(until=until):
                secs = (until - self.clock.now()).total_seconds()
                if secs > 0:
                    try:
                        await asyncio.wait_for(self._stop.wait(), timeout=secs)
                    except TimeoutError:
                        pass
                    else:
                        return None
                return PollTick()
            case Checkin(request=request):
                return await self._checkin(request)
            case FetchManifest(rollout_id=rollout_id, wave_index=wave_index):
                return await self.manifests.fetch(rollout_id, wave_index, self.clock.now())
            case FetchClosure(closure_hash=closure):
                fetched = await self.activator.fetch(closure)
                if isinstance(fetched, FetchFailed):
                    log.warning(
                        "fetch failed closure=%s signature=%s reason=%s",
                        closure,
                        fetched.signature_mismatch,
                        fetched.reason,
                    )
                else:
                    log.info("fetch ok closure=%s", closure)
                return fetched
            case Activate(closure_hash=closure):
                log.info("activate closure=%s", closure)
                outcome = await self.activator.activate(closure)
                self.health.rerun()
                log.info("activation outcome=%s closure=%s detail=%s",
                         type(outcome).__name__, closure, outcome)  # fmt: skip
                return outcome
            case SendConfirm(request=request, endpoint=endpoint):
                return await self._confirm(request, endpoint)
            case Rollback(reason=reason, rollout=rollout):
                log.info("rollback reason=%s rollout=%s", reason, rollout or "-")
                done = await self.activator.rollback()
                self.health.rerun()
                log.info(
                    "rollback %s current=%s phase=%s",
                    "done" if done.ok else "failed",
                    done.current_closure or "-",
                    done.phase or "-",
                )
                return done
            case Report():
                return await self._report(action)
            case PersistState(state=state):
                try:
                    files = self.state.write(state)
                except OSError as exc:
                    log.error("cannot write state dir reason=%s", exc)
                else:
                    if files:
                        log.debug("state persisted files=%s", ",".join(files))
                return StatePersisted()
            case _:
                assert_never(action)

    # --- checkin ---------------------------------------------------------------------------

    def _augment(self, request: CheckinRequest) -> CheckinRequest:
        """The body as it leaves (`checkin.outgoing`), from what this host shows now."""
        observed = self.activator.current_system()
        known = request.current_generation.closure_hash
        if observed is not None and observed != known and observed != self._drift_logged:
            self._drift_logged = observed
            self.health.rerun()
            log.warning(
                "current system changed outside the agent; reporting the link "
                "current=%s agent_saw=%s",
                observed,
                known,
            )
        profile = self.activator.profile_system()
        booted = self.activator.booted_system()
        reboot_due = profile is not None and booted is not None and profile != booted
        view = HostView(
            current=observed,
            pending=profile if reboot_due else None,
            uptime_secs=self.uptime(),
            health_probes=self.health.snapshot(),
            health_check_mode=self.health.mode,
            # Stamped as the body leaves (after any renewal and queued reports), so the
            # CP's skew estimate is not inflated by this agent's own delays.
            sent_at=self.clock.now(),
        )
        return outgoing(request, view, self.signer.attest)

    async def _checkin(self, request: CheckinRequest) -> CheckinOk | CheckinFailed:
        if self.certs is not None:
            at = self.clock.now()
            # An expired certificate only earns a reset with no reason: say why instead.
            dead = await self.certs.reenroll_if_expired(at)
            if dead is not None:
                log.warning("checkin failed reason=%s", dead)
                return CheckinFailed(reason=dead)
            failure = await self.certs.renew_if_due(at)
            last = self._renewal_reported_at
            if failure is not None and (last is None or at - last >= RENEWAL_REPORT_INTERVAL):
                self._renewal_reported_at = at
                self._queue(self._side_report(RENEWAL_FAILED, reason=failure))
        await self._flush_outbox()
        body = self._augment(request)
        try:
            response = await self.transport.checkin(body)
        except (Unreachable, PeerError) as exc:
            log.warning("checkin failed reason=%s", exc)
            return CheckinFailed(reason=str(exc))
        target = response.target
        log.info(
            "checkin ok current=%s target=%s rollout=%s rollback=%s",
            body.current_generation.closure_hash,
            target.closure_hash if target is not None else "-",
            target.rollout_id if target is not None else "-",
            response.rollback.rollout if response.rollback is not None else "-",
        )
        return CheckinOk(response=response, current_closure=body.current_generation.closure_hash)

    # --- confirm ---------------------------------------------------------------------------

    async def _confirm(
        self, request: ConfirmRequest, endpoint: str
    ) -> ConfirmAnswered | ConfirmFailed:
        try:
            status = await self.transport.confirm(request, endpoint)
        except (Unreachable, PeerError) as exc:
            log.warning("confirm failed rollout=%s reason=%s", request.rollout, exc)
            return ConfirmFailed(reason=str(exc))
        log.info(
            "confirm answered status=%d rollout=%s closure=%s",
            status,
            request.rollout,
            request.generation.closure_hash,
        )
        return ConfirmAnswered(status=status)

    # --- reports (signed, kept in order until delivered) -----------------------------------

    def _queue(self, request: ReportRequest) -> None:
        if len(self._outbox) >= OUTBOX_LIMIT:
            dropped = self._outbox.popleft()
            log.warning("report outbox full; dropping oldest event=%s", dropped.event)
        self._outbox.append(self.signer.sign_report(request))

    async def _flush_outbox(self) -> bool:
        """Send queued reports in order; True if the outbox is now empty."""
        while self._outbox:
            request = self._outbox[0]
            try:
                accepted = await self.transport.report(request)
            except (Unreachable, PeerError) as exc:
                log.warning(
                    "report not delivered; kept for retry event=%s queued=%d reason=%s",
                    request.event,
                    len(self._outbox),
                    exc,
                )
                return False
            self._outbox.popleft()
            log.info(
                "report sent event=%s rollout=%s signed=%s event_id=%s",
                request.event,
                request.rollout or "-",
                request.signature is not None,
                accepted.event_id,
            )
        return True

    async def _report(self, action: Report) -> ReportSent | ReportFailed:
        self._queue(action.to_request(hostname=self.hostname, agent_version=self.agent_version))
        if await self._flush_outbox():
            return ReportSent()
        return ReportFailed(reason="control plane did not take the report; kept for retry")

    def _side_report(self, event: str, **details: str) -> ReportRequest:
        """A report outside the reducer's path (e.g. renewal-failed)."""
        return ReportRequest(
            hostname=self.hostname,
            agent_version=self.agent_version,
            occurred_at=self.clock.now(),
            rollout=None,
            event=event,
            details=details,
        )
