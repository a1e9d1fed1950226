"""The CP's aiohttp shell: parse, call `CpService`, encode. Handlers decide nothing.

Layers on `/v1/*` and `/metrics`, outermost first (protocol §1.1): readiness gate,
`X-Nixfleet-Protocol`, then mTLS identity, revocation and role. `/healthz` bypasses them.
Errors of every kind become one JSON body `{"error": …, "reason": …}` here.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nixfleet.core import wire
from nixfleet.core.canonical import load_json
from nixfleet.core.dispatch import ConfirmVerdict
from nixfleet.core.errors import NixfleetError, ParseError
from nixfleet.core.timeutil import format_instant

from .api import CONFIRM_STATUS, ApiError, forbidden, unauthorized
from .config import DEFAULT_BODY_READ_TIMEOUT_SECS
from .dbtrouble import db_trouble_middleware
from .issuance import Role, role_of
from .listener import body_deadline, peer_noise
from .service import CpService

log = logging.getLogger("nixfleet.cp")

SERVICE = web.AppKey("service", CpService)
STRICT = web.AppKey("strict", bool)
PROTOCOL_HEADER = "X-Nixfleet-Protocol"
PROTOCOL_MAJOR = 1
ANONYMOUS = frozenset({"/v1/enroll", "/v1/agent/bootstrap-report"})
AGENT_PREFIX = "/v1/agent/"
"""A host's own routes: agent certificates only."""
AGENT_READS = frozenset({"/v1/whoami", "/v1/rollouts/{rid}", "/v1/rollouts/{rid}/sig"})
"""The other routes an agent calls; every other mTLS route needs an operator certificate."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"


def _error_body(status: int, code: str, reason: str) -> web.Response:
    return web.json_response({"error": code, "reason": reason}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        resp = _error_body(exc.http_status, exc.code, exc.message)
        if exc.retry_after is not None:
            resp.headers["Retry-After"] = str(exc.retry_after)
        return resp
    except ParseError as exc:
        return _error_body(400, "bad request", exc.message)
    except (HttpProcessingError, RequestPayloadError) as exc:
        # The body could not be read as sent (e.g. a Content-Encoding it does not
        # have): the peer's doing; the stream is unusable, so the connection closes.
        reason = peer_noise(exc) or "malformed request"
        log.info("http: request dropped peer=%s reason=%s", request.remote, reason)
        resp = _error_body(400, "bad request", reason)
        resp.force_close()
        return resp
    except NixfleetError as exc:
        return _error_body(exc.http_status, _phrase(exc.http_status), exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = _error_body(exc.status, _phrase(exc.status), exc.text or exc.reason)
        if "Allow" in exc.headers:  # 405 says which methods the route has
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp


@web.middleware
async def gates_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if not (path.startswith("/v1/") or path == "/metrics"):
        return await handler(request)
    service = request.app[SERVICE]
    service.require_ready()
    header = request.headers.get(PROTOCOL_HEADER)
    if header is None:
        if request.app[STRICT]:
            raise ApiError(400, "bad request", f"missing {PROTOCOL_HEADER} header")
    else:
        try:
            major = int(header.strip())
        except ValueError:
            raise ApiError(400, "bad request", f"{PROTOCOL_HEADER} is not an integer") from None
        if major != PROTOCOL_MAJOR:
            raise ApiError(426, "upgrade required", f"protocol major {major} != {PROTOCOL_MAJOR}")
    if path not in ANONYMOUS:
        peer = _authenticate(request, service)
        _authorize(peer, request)
        request["peer"] = peer
    return await handler(request)


class Peer:
    __slots__ = ("cn", "machine_id", "not_before", "role")

    def __init__(self, cn: str, machine_id: str, not_before: datetime, role: Role) -> None:
        self.cn = cn
        self.machine_id = machine_id
        self.not_before = not_before
        self.role = role


def _authenticate(request: web.Request, service: CpService) -> Peer:
    transport = request.transport
    sslobj: ssl.SSLObject | None = (
        transport.get_extra_info("ssl_object") if transport is not None else None
    )
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    if not der:
        raise unauthorized("client certificate required")
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns:
        raise unauthorized("client certificate has no CN")
    cn = str(cns[0].value)
    machine_id = service.machine_id(cn)
    not_before = cert.not_valid_before_utc
    if service.is_revoked(machine_id, not_before):
        log.warning("rejecting revoked cert cert_revocations hostname=%s cn=%s", machine_id, cn)
        raise unauthorized(f"certificate for {machine_id} is revoked")
    return Peer(cn, machine_id, not_before, role_of(cn))


def _authorize(peer: Peer, request: web.Request) -> None:
    """Role separation (decisions.md): an agent certificate reaches its own host's
    routes and the manifests it verifies; fleet-wide reads need an operator's, which
    in turn never speaks for a host."""
    resource = request.match_info.route.resource
    if request.match_info.http_exception is not None or resource is None:
        return  # no such route or method: the router's 404/405 follows
    route = resource.canonical
    if route.startswith(AGENT_PREFIX):
        if peer.role is not Role.AGENT:
            raise forbidden(f"{route} is for agent certificates; {peer.cn} is an operator")
    elif peer.role is Role.AGENT and route not in AGENT_READS:
        raise forbidden(f"{route} needs an operator certificate; {peer.cn} is an agent")


def _peer(request: web.Request) -> Peer:
    peer: Peer = request["peer"]
    return peer


async def _body(request: web.Request, what: str) -> Any:
    raw = await request.read()
    try:
        return load_json(raw, source=what)
    except RecursionError:
        raise ApiError(400, "bad request", f"{what}: JSON nested too deeply") from None
    except ValueError as exc:
        # e.g. an integer literal past Python's digit limit; load_json lets it through.
        raise ApiError(400, "bad request", f"{what}: not JSON ({exc})") from None


def _same_host(peer: Peer, hostname: str) -> None:
    if peer.machine_id != hostname:
        raise forbidden(f"certificate is for {peer.machine_id}, body names {hostname}")


# --- routes ----------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """Liveness (seed 001 reads `last_tick_at`); readiness rides along as fields."""
    return web.json_response(request.app[SERVICE].health())


async def readyz(request: web.Request) -> web.Response:
    """200 once every `/v1` call would be served, else 503 saying what is awaited."""
    service = request.app[SERVICE]
    service.require_ready()
    return web.json_response({"ready": True})


async def whoami(request: web.Request) -> web.Response:
    return web.json_response({"cn": _peer(request).cn, "issuedAt": format_instant(utc_now())})


async def checkin(request: web.Request) -> web.Response:
    req = wire.parse_checkin_request(await _body(request, "checkin body"), source="checkin body")
    _same_host(_peer(request), req.hostname)
    reply = request.app[SERVICE].checkin(req, now=utc_now())
    return web.json_response(wire.dump_checkin_response(reply))


async def confirm(request: web.Request) -> web.Response:
    req = wire.parse_confirm_request(await _body(request, "confirm body"), source="confirm body")
    _same_host(_peer(request), req.hostname)
    verdict = request.app[SERVICE].confirm(req, now=utc_now())
    if CONFIRM_STATUS[verdict] == 204:
        return web.Response(status=204)
    if verdict is ConfirmVerdict.EXPIRED:
        raise ApiError(410, "gone", "the confirm window of this dispatch has closed; roll back")
    raise ApiError(410, "gone", "no matching dispatch and no recoverable orphan; roll back")


async def report(request: web.Request) -> web.Response:
    req = wire.parse_report_request(await _body(request, "report body"), source="report body")
    _same_host(_peer(request), req.hostname)
    accepted = request.app[SERVICE].report(req, now=utc_now())
    return web.json_response(wire.dump_report_accepted(accepted))


async def enroll(request: web.Request) -> web.Response:
    req = wire.parse_enroll_request(await _body(request, "enroll body"), source="enroll body")
    issued = request.app[SERVICE].enroll(req, now=utc_now())
    return web.json_response(wire.dump_cert_issued(issued))


async def renew(request: web.Request) -> web.Response:
    req = wire.parse_renew_request(await _body(request, "renew body"), source="renew body")
    issued = request.app[SERVICE].renew(_peer(request).machine_id, req, now=utc_now())
    return web.json_response(wire.dump_cert_issued(issued))


async def channel(request: web.Request) -> web.Response:
    info = request.app[SERVICE].channel_info(request.match_info["name"])
    return web.json_response(info)


async def hosts(request: web.Request) -> web.Response:
    entries = request.app[SERVICE].host_status(now=utc_now())
    return web.json_response({"hosts": [wire.dump_host_status_entry(e) for e in entries]})


async def rollouts(request: web.Request) -> web.Response:
    return web.json_response({"rollouts": request.app[SERVICE].rollouts_in_flight()})


async def rollout_manifest(request: web.Request) -> web.Response:
    body, _sig = request.app[SERVICE].manifest(request.match_info["rid"])
    return web.Response(body=body, content_type="application/json")


async def rollout_signature(request: web.Request) -> web.Response:
    _body_bytes, sig = request.app[SERVICE].manifest(request.match_info["rid"])
    if sig is None:
        raise ApiError(500, "internal", "manifest signature is missing")
    return web.Response(body=sig, content_type="application/octet-stream")


async def metrics(request: web.Request) -> web.Response:
    resp = web.Response(body=generate_latest(request.app[SERVICE].metrics.registry))
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp


def build_app(
    service: CpService,
    *,
    strict: bool,
    max_body_bytes: int,
    body_read_timeout: float = DEFAULT_BODY_READ_TIMEOUT_SECS,
) -> web.Application:
    middlewares = [
        errors_middleware,
        db_trouble_middleware,
        gates_middleware,
        body_deadline(body_read_timeout),
    ]
    app = web.Application(middlewares=middlewares, client_max_size=max_body_bytes)
    app[SERVICE] = service
    app[STRICT] = strict
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/v1/enroll", enroll)
    app.router.add_post("/v1/agent/renew", renew)
    app.router.add_get("/v1/whoami", whoami)
    app.router.add_post("/v1/agent/checkin", checkin)
    app.router.add_post("/v1/agent/confirm", confirm)
    app.router.add_post("/v1/agent/report", report)
    app.router.add_get("/v1/channels/{name}", channel)
    app.router.add_get("/v1/hosts", hosts)
    app.router.add_get("/v1/rollouts", rollouts)
    app.router.add_get("/v1/rollouts/{rid}", rollout_manifest)
    app.router.add_get("/v1/rollouts/{rid}/sig", rollout_signature)
    app.router.add_get("/metrics", metrics)
    return app
