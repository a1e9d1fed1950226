"""Malformed requests and dropped connections from anonymous clients (issue 9 item 7):
one INFO line each naming the peer and the reason, never aiohttp's ERROR with a
traceback; a handler that raises is still a bug with its traceback."""

from __future__ import annotations

import logging
import socket
import ssl

import aiohttp
import pytest
from aiohttp import web

from harness.cpenv import CpEnv, MakeEnv, assert_clean_log, curl, declared, free_port, wait_until
from nixfleet.cp.config import ConnectionLimits
from nixfleet.cp.listener import CpSite

DROPPED = "http: request dropped peer=127.0.0.1 reason="


def tls_socket(env: CpEnv) -> ssl.SSLSocket:
    ctx = env.pki.client_context()
    ctx.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", env.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def read_reply(sock: ssl.SSLSocket) -> bytes:
    """One response: read until the headers and Content-Length bytes are in, or EOF."""
    buf = b""
    while True:
        head, sep, body = buf.partition(b"\r\n\r\n")
        if sep:
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            if len(body) >= length:
                return buf
        try:
            chunk = sock.recv(65536)
        except OSError:
            return buf
        if not chunk:
            return buf
        buf += chunk


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0


ENROLL_HEAD = b"POST /v1/enroll HTTP/1.1\r\nHost: cp\r\nContent-Type: application/json\r\n"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: cp\r\n\r\n"

MALFORMED = {
    "100 KB URL": b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: cp\r\n\r\n",
    "64 KB header": b"GET /healthz HTTP/1.1\r\nHost: cp\r\nX-Big: " + b"b" * 65_536 + b"\r\n\r\n",
    "missing Host": b"GET /healthz HTTP/1.1\r\n\r\n",
    "chunked + Content-Length": ENROLL_HEAD
    + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad version": b"GET /healthz HTTP/9.x\r\nHost: cp\r\n\r\n",
}


def test_anonymous_noise_is_one_info_line_each(make_env: MakeEnv) -> None:
    env = make_env(declared("h1"))
    env.publish()
    cp = env.start()

    for what, request in MALFORMED.items():
        seen = len(cp.lines(DROPPED))
        with tls_socket(env) as sock:
            sock.sendall(request)
            assert status(read_reply(sock)) == 400, what
        wait_until(lambda n=seen: len(cp.lines(DROPPED)) > n, 10, f"the line for {what}")

    # A garbage request line after a good request on a kept-alive connection.
    seen = len(cp.lines(DROPPED))
    with tls_socket(env) as sock:
        sock.sendall(HEALTHZ)
        assert status(read_reply(sock)) == 200
        sock.sendall(b"\x00\x01 garbage \xff\r\n\r\n")
        assert status(read_reply(sock)) == 400
    wait_until(lambda: len(cp.lines(DROPPED)) > seen, 10, "the line for a garbage request line")

    # A client that drops /v1/enroll halfway through its body.
    seen = len(cp.lines(DROPPED))
    with tls_socket(env) as sock:
        sock.sendall(ENROLL_HEAD + b'Content-Length: 5000\r\n\r\n{"token": "')
    wait_until(lambda: len(cp.lines(DROPPED)) > seen, 10, "the line for a dropped enroll")

    # Each case is one INFO line naming peer and reason, no ERROR, no traceback.
    lines = cp.lines(DROPPED)
    assert len(lines) == len(MALFORMED) + 2, "\n".join(lines)
    assert all(" INFO " in ln for ln in lines), "\n".join(lines)
    assert any("connection dropped mid-request" in ln for ln in lines)
    assert any("Missing 'Host' header" in ln for ln in lines)
    assert not cp.lines(" ERROR ")
    assert_clean_log(cp)
    assert curl(env.curl("/healthz")).status == 200


async def test_a_handler_bug_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a real bug")

    app = web.Application()
    app.router.add_get("/broken", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = CpSite(runner, "127.0.0.1", port, ssl_context=None, limits=ConnectionLimits())
    await site.start()
    try:
        with caplog.at_level(logging.INFO):
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/broken") as resp,
            ):
                assert resp.status == 500
    finally:
        await runner.cleanup()
    bugs = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert bugs, caplog.text
    assert isinstance(bugs[0].exc_info[1], RuntimeError)  # type: ignore[index]
    assert "request dropped" not in caplog.text
