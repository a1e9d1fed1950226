"""TCP forwarders on 127.0.0.1 that can be cut: a network partition between one agent
and the control plane, on one machine.

Each agent talks to the CP through its own `Proxy` (its `--control-plane-url` names the
proxy's port; TLS passes through untouched). `cut_for(secs)` drops every connection in
flight (RST) and closes the listening socket, so new connections are refused, until
the cut heals and the same port listens again. All proxies share one asyncio loop in a
daemon thread; the methods here are called from the harness's own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

HOST = "127.0.0.1"
CHUNK = 65536

T = TypeVar("T")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()


class Proxy:
    def __init__(self, hub: ProxyHub, upstream_port: int) -> None:
        self.hub = hub
        self.upstream_port = upstream_port
        self.port = 0
        self.cut = False
        self._server: asyncio.AbstractServer | None = None
        self._live: set[asyncio.StreamWriter] = set()
        self._heal: asyncio.TimerHandle | None = None
        self._heal_at = 0.0

    async def _listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, self.port))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._serve, sock=sock)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.cut:
            client_w.transport.abort()
            return
        try:
            up_r, up_w = await asyncio.open_connection(HOST, self.upstream_port)
        except OSError:  # the CP is down: the agent sees its connection dropped
            client_w.transport.abort()
            return
        self._live.update((client_w, up_w))
        try:
            await asyncio.wait(
                [
                    asyncio.create_task(_pipe(client_r, up_w)),
                    asyncio.create_task(_pipe(up_r, client_w)),
                ],
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for w in (client_w, up_w):
                self._live.discard(w)
                w.close()

    async def _cut(self, secs: float, on_heal: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        heal_at = loop.time() + secs
        if self.cut and heal_at <= self._heal_at:
            return  # already cut for longer
        if self._heal is not None:
            self._heal.cancel()
        self._heal_at = heal_at
        self._heal = loop.call_at(heal_at, lambda: loop.create_task(self._restore(on_heal)))
        if self.cut:
            return
        self.cut = True
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._live):
            w.transport.abort()
        self._live.clear()

    async def _restore(self, on_heal: Callable[[], None]) -> None:
        self._heal = None
        await self._listen()
        self.cut = False
        on_heal()

    def cut_for(self, secs: float, on_heal: Callable[[], None] = lambda: None) -> None:
        """Refuse and drop this proxy's connections for `secs` seconds from now; then
        listen again and call `on_heal` (in the proxy thread). A cut during a cut
        extends it."""
        self.hub.call(self._cut(secs, on_heal))


class ProxyHub:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.proxies: list[Proxy] = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="tcp-proxies")
        self._thread.daemon = True
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def add(self, upstream_port: int) -> Proxy:
        """A new proxy to 127.0.0.1:`upstream_port`, listening on a free port."""
        proxy = Proxy(self, upstream_port)
        self.call(proxy._listen())
        self.proxies.append(proxy)
        return proxy

    async def _shutdown(self) -> None:
        for p in self.proxies:
            if p._heal is not None:
                p._heal.cancel()
            if p._server is not None:
                p._server.close()
            for w in list(p._live):
                w.transport.abort()
        # Every connection is aborted, so its tasks end on their own (cancelling them
        # would make asyncio's stream callbacks log the cancellation).
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=2)

    def close(self) -> None:
        if not self.loop.is_running():
            return
        self.call(self._shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()
