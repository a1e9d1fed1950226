"""The CP's listening socket and what it tolerates from a connection.

- TLS handshake timeout: a peer that connects and never finishes the handshake is
  dropped (asyncio's `ssl_handshake_timeout`).
- Idle keep-alive timeout (aiohttp's `keepalive_timeout`, armed from the moment the
  connection is accepted, so it also ends a request whose headers are drip-fed). Agents
  poll every 60 s on one keep-alive connection and drop it after 70 s idle
  (`agent/transport.py`), so the default 75 s is longer than both.
- Body-read timeout: the body is read under a deadline before any handler runs; a
  drip-fed body gets 408 and the connection is closed.
- A cap on concurrent connections per peer address, counted once the connection
  reaches HTTP (after the TLS handshake, which the handshake timeout bounds). A fleet
  behind one NAT address needs one connection per agent: raise it (0 = no cap).
- A malformed request or a peer that drops its connection is the peer's doing: one
  INFO line naming the peer and the reason, not aiohttp's ERROR with a traceback. A
  handler that raises anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from nixfleet.core.idents import escape_controls

from .config import ConnectionLimits
from .ratelog import RateLimitedLog

log = logging.getLogger("nixfleet.cp")

MAX_REASON_CHARS = 200

_refusals = RateLimitedLog(log)


class PeerCounter:
    """Open connections per peer address; `admit` refuses past the cap (0 = no cap)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open: Counter[str] = Counter()

    def admit(self, addr: str) -> bool:
        if self.cap and self.open[addr] >= self.cap:
            return False
        self.open[addr] += 1
        return True

    def release(self, addr: str) -> None:
        self.open[addr] -= 1
        if self.open[addr] <= 0:
            del self.open[addr]


def peer_noise(exc: object) -> str | None:
    """Why a failure is the peer's doing (one line), or None if it is a bug of ours."""
    if isinstance(exc, HttpProcessingError | RequestPayloadError):
        message = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
        text = escape_controls(" ".join(str(message).split())) or type(exc).__name__
        if len(text) > MAX_REASON_CHARS:
            text = text[:MAX_REASON_CHARS] + "…"
        return f"malformed request ({text})"
    if isinstance(exc, ConnectionError):
        return "connection dropped mid-request"
    return None


class CpRequestHandler(RequestHandler):
    """aiohttp's connection protocol plus the per-peer cap and quiet peer errors."""

    __slots__ = ("_counted", "_peer_addr", "_peers")

    def __init__(self, manager: web.Server, *, peers: PeerCounter, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._peers = peers
        self._peer_addr = "?"
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peername = transport.get_extra_info("peername")
        self._peer_addr = str(peername[0]) if peername else "?"
        if self._peers.admit(self._peer_addr):
            self._counted = True
            return
        _refusals.log(
            logging.WARNING,
            self._peer_addr,
            "http: connection refused peer=%s reason=over max-connections-per-peer=%d",
            self._peer_addr,
            self._peers.cap,
        )
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._peers.release(self._peer_addr)
        super().connection_lost(exc)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        reason = peer_noise(kw.get("exc_info"))
        if reason is None:
            super().log_exception(*args, **kw)
        else:
            log.info("http: request dropped peer=%s reason=%s", self._peer_addr, reason)


class CpSite(web.BaseSite):
    """`web.TCPSite` with a TLS handshake timeout and `CpRequestHandler` connections."""

    __slots__ = ("_factory", "_host", "_limits", "_port")

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        limits: ConnectionLimits,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._limits = limits
        server = runner.server
        assert server is not None, "runner.setup() first"
        peers = PeerCounter(limits.max_connections_per_peer)
        self._factory: Callable[[], CpRequestHandler] = lambda: CpRequestHandler(
            server,
            loop=asyncio.get_running_loop(),
            peers=peers,
            access_log=None,
            keepalive_timeout=limits.keepalive_timeout_secs,
        )

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        tls = self._ssl_context is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._factory,
            self._host,
            self._port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=self._limits.handshake_timeout_secs if tls else None,
            backlog=self._backlog,
        )


def body_deadline(timeout_secs: float) -> Middleware:
    """Middleware: read the whole body within `timeout_secs`, else answer 408 and close
    (no lingering read of the rest); handlers then get the body from aiohttp's cache."""

    @web.middleware
    async def read_body_in_time(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists:
            try:
                async with asyncio.timeout(timeout_secs):
                    await request.read()
            except TimeoutError:
                reason = f"body not received within {timeout_secs:g} s"
                log.info("http: request dropped peer=%s reason=%s", request.remote, reason)
                resp = web.json_response({"error": "request timeout", "reason": reason}, status=408)
                resp.force_close()
                await resp.prepare(request)
                await resp.write_eof()
                request.protocol.force_close()
                return resp
        return await handler(request)

    return read_body_in_time
