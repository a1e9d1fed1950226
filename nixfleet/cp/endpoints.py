"""A request between its bytes and `CpService`, without aiohttp.

The gates of every `/v1` call (readiness, the protocol header, the client certificate's
identity and revocation, the role) and the agent calls (decode, parse, same host, the
service, encode) live here once. The aiohttp app (`http.py`) and the simulated CP
(`fleet_sim/cp.py`) both call them, so a bug put back here shows in the simulator too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from typing import Any

from nixfleet.core import protocol, wire
from nixfleet.core.canonical import load_json
from nixfleet.core.dispatch import ConfirmVerdict
from nixfleet.core.errors import NixfleetError, ParseError

from .api import CONFIRM_STATUS, ApiError, forbidden, unauthorized
from .issuance import Role, role_of
from .service import CpService

log = logging.getLogger("nixfleet.cp")


@dataclass(frozen=True, slots=True)
class ClientCert:
    """What the TLS layer verified of the peer's certificate."""

    cn: str | None
    """The subject CN; None when the certificate has none."""
    not_before: datetime


@dataclass(frozen=True, slots=True)
class Peer:
    cn: str
    machine_id: str
    not_before: datetime
    role: Role


@dataclass(frozen=True, slots=True)
class Refusal:
    """How an error becomes an answer: status, the JSON body `{"error", "reason"}`
    and its headers. One mapping for the aiohttp app and the simulated CP."""

    status: int
    code: str
    reason: str
    retry_after: int | None = None

    def body(self) -> dict[str, str]:
        return {"error": self.code, "reason": self.reason}


def refusal(exc: NixfleetError) -> Refusal:
    if isinstance(exc, ApiError):
        return Refusal(exc.http_status, exc.code, exc.message, exc.retry_after)
    if isinstance(exc, ParseError):
        return Refusal(400, "bad request", exc.message)
    return Refusal(exc.http_status, phrase(exc.http_status), exc.message)


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"


def admit(service: CpService, header: str | None, *, strict: bool) -> None:
    """The outer gates (protocol §1.1): readiness (503), then the protocol header."""
    service.require_ready()
    if header is None:
        if strict:
            raise ApiError(400, "bad request", f"missing {protocol.HEADER} header")
        return
    try:
        major = int(header.strip())
    except ValueError:
        raise ApiError(400, "bad request", f"{protocol.HEADER} is not an integer") from None
    if major != protocol.MAJOR:
        raise ApiError(426, "upgrade required", f"protocol major {major} != {protocol.MAJOR}")


def identify(service: CpService, cert: ClientCert | None) -> Peer:
    """mTLS identity: the CN names the machine (agent-<id>.<suffix>) or an operator; a
    certificate issued before the machine's revocation instant is refused (401)."""
    if cert is None:
        raise unauthorized("client certificate required")
    if cert.cn is None:
        raise unauthorized("client certificate has no CN")
    machine_id = service.machine_id(cert.cn)
    if service.is_revoked(machine_id, cert.not_before):
        log.warning(
            "rejecting revoked cert cert_revocations hostname=%s cn=%s", machine_id, cert.cn
        )
        raise unauthorized(f"certificate for {machine_id} is revoked")
    return Peer(cert.cn, machine_id, cert.not_before, role_of(cert.cn))


def authorize(peer: Peer, route: str) -> None:
    """Role separation (decisions.md): an agent certificate reaches its own host's
    routes and the manifests it verifies; fleet-wide reads need an operator's, which
    in turn never speaks for a host. `route` is the canonical route matched."""
    if route.startswith(protocol.AGENT_PREFIX):
        if peer.role is not Role.AGENT:
            raise forbidden(f"{route} is for agent certificates; {peer.cn} is an operator")
    elif peer.role is Role.AGENT and route not in protocol.AGENT_READS:
        raise forbidden(f"{route} needs an operator certificate; {peer.cn} is an agent")


def decode(raw: bytes, what: str) -> Any:
    """A request body as JSON; a 400 naming `what` otherwise."""
    try:
        return load_json(raw, source=what)
    except RecursionError:
        raise ApiError(400, "bad request", f"{what}: JSON nested too deeply") from None
    except ValueError as exc:
        # e.g. an integer literal past Python's digit limit; load_json lets it through.
        raise ApiError(400, "bad request", f"{what}: not JSON ({exc})") from None


def same_host(peer: Peer, hostname: str) -> None:
    if peer.machine_id != hostname:
        raise forbidden(f"certificate is for {peer.machine_id}, body names {hostname}")


def checkin(service: CpService, peer: Peer, raw: bytes, *, now: datetime) -> dict[str, Any]:
    req = wire.parse_checkin_request(decode(raw, "checkin body"), source="checkin body")
    same_host(peer, req.hostname)
    return wire.dump_checkin_response(service.checkin(req, now=now))


def confirm(service: CpService, peer: Peer, raw: bytes, *, now: datetime) -> int:
    """204, or an ApiError 410 telling the host to roll back."""
    req = wire.parse_confirm_request(decode(raw, "confirm body"), source="confirm body")
    same_host(peer, req.hostname)
    verdict = service.confirm(req, now=now)
    if CONFIRM_STATUS[verdict] == 204:
        return 204
    if verdict is ConfirmVerdict.EXPIRED:
        raise ApiError(410, "gone", "the confirm window of this dispatch has closed; roll back")
    raise ApiError(410, "gone", "no matching dispatch and no recoverable orphan; roll back")


def report(service: CpService, peer: Peer, raw: bytes, *, now: datetime) -> dict[str, Any]:
    req = wire.parse_report_request(decode(raw, "report body"), source="report body")
    same_host(peer, req.hostname)
    return wire.dump_report_accepted(service.report(req, now=now))
