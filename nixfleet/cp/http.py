"""The CP's aiohttp shell: parse, call `CpService`, encode. Handlers decide nothing.

Layers on `/v1/*` and `/metrics`, outermost first (protocol §1.1): readiness gate,
`X-Nixfleet-Protocol`, then mTLS identity, revocation and role. `/healthz` bypasses them.
The gates and the agent calls themselves are `endpoints` (no aiohttp there: the
simulator runs them too); this module reads the request and writes the answer.
Errors of every kind become one JSON body `{"error": …, "reason": …}` here.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nixfleet.core import protocol, wire
from nixfleet.core.errors import NixfleetError
from nixfleet.core.timeutil import format_instant

from . import endpoints
from .api import ApiError
from .config import DEFAULT_BODY_READ_TIMEOUT_SECS
from .dbtrouble import db_trouble_middleware
from .endpoints import ClientCert, Peer
from .listener import body_deadline, peer_noise
from .service import CpService

log = logging.getLogger("nixfleet.cp")

SERVICE = web.AppKey("service", CpService)
STRICT = web.AppKey("strict", bool)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _error_body(status: int, code: str, reason: str) -> web.Response:
    return web.json_response({"error": code, "reason": reason}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (HttpProcessingError, RequestPayloadError) as exc:
        # The body could not be read as sent (e.g. a Content-Encoding it does not
        # have): the peer's doing; the stream is unusable, so the connection closes.
        reason = peer_noise(exc) or "malformed request"
        log.info("http: request dropped peer=%s reason=%s", request.remote, reason)
        resp = _error_body(400, "bad request", reason)
        resp.force_close()
        return resp
    except NixfleetError as exc:
        refused = endpoints.refusal(exc)
        resp = _error_body(refused.status, refused.code, refused.reason)
        if refused.retry_after is not None:
            resp.headers["Retry-After"] = str(refused.retry_after)
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = _error_body(exc.status, endpoints.phrase(exc.status), exc.text or exc.reason)
        if "Allow" in exc.headers:  # 405 says which methods the route has
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp


@web.middleware
async def gates_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if not (path.startswith("/v1/") or path == protocol.METRICS):
        return await handler(request)
    service = request.app[SERVICE]
    endpoints.admit(service, request.headers.get(protocol.HEADER), strict=request.app[STRICT])
    if path not in protocol.ANONYMOUS:
        peer = endpoints.identify(service, _client_cert(request))
        resource = request.match_info.route.resource
        # No such route or method: the router's 404/405 follows.
        if request.match_info.http_exception is None and resource is not None:
            endpoints.authorize(peer, resource.canonical)
        request["peer"] = peer
    return await handler(request)


def _client_cert(request: web.Request) -> ClientCert | None:
    transport = request.transport
    sslobj: ssl.SSLObject | None = (
        transport.get_extra_info("ssl_object") if transport is not None else None
    )
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return ClientCert(str(cns[0].value) if cns else None, cert.not_valid_before_utc)


def _peer(request: web.Request) -> Peer:
    peer: Peer = request["peer"]
    return peer


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
    raw = await request.read()
    reply = endpoints.checkin(request.app[SERVICE], _peer(request), raw, now=utc_now())
    return web.json_response(reply)


async def confirm(request: web.Request) -> web.Response:
    raw = await request.read()
    status = endpoints.confirm(request.app[SERVICE], _peer(request), raw, now=utc_now())
    return web.Response(status=status)


async def report(request: web.Request) -> web.Response:
    raw = await request.read()
    reply = endpoints.report(request.app[SERVICE], _peer(request), raw, now=utc_now())
    return web.json_response(reply)


async def enroll(request: web.Request) -> web.Response:
    body = endpoints.decode(await request.read(), "enroll body")
    req = wire.parse_enroll_request(body, source="enroll body")
    issued = request.app[SERVICE].enroll(req, now=utc_now())
    return web.json_response(wire.dump_cert_issued(issued))


async def renew(request: web.Request) -> web.Response:
    body = endpoints.decode(await request.read(), "renew body")
    req = wire.parse_renew_request(body, source="renew body")
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
    app.router.add_get(protocol.HEALTHZ, healthz)
    app.router.add_get(protocol.READYZ, readyz)
    app.router.add_post(protocol.ENROLL, enroll)
    app.router.add_post(protocol.RENEW, renew)
    app.router.add_get(protocol.WHOAMI, whoami)
    app.router.add_post(protocol.CHECKIN, checkin)
    app.router.add_post(protocol.CONFIRM, confirm)
    app.router.add_post(protocol.REPORT, report)
    app.router.add_get(protocol.CHANNEL, channel)
    app.router.add_get(protocol.HOSTS, hosts)
    app.router.add_get(protocol.ROLLOUTS, rollouts)
    app.router.add_get(protocol.ROLLOUT, rollout_manifest)
    app.router.add_get(protocol.ROLLOUT_SIG, rollout_signature)
    app.router.add_get(protocol.METRICS, metrics)
    return app
