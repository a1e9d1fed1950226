"""Connection limits of the real CP process (issue 9 item 8), with real sockets: the TLS
handshake, idle keep-alive and body-read timeouts, and the per-peer connection cap."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from harness.cpenv import CpEnv, CpProcess, MakeEnv, assert_clean_log, curl, declared

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: cp\r\n\r\n"
SHORT = 1.0
"""The timeouts under test, in seconds."""
SLACK = 4.0
"""How much later than its timeout a drop may come (timer granularity, a loaded box)."""


@pytest.fixture
def env(make_env: MakeEnv) -> CpEnv:
    env = make_env(declared("h1"))
    env.publish()
    return env


def tcp(env: CpEnv) -> socket.socket:
    return socket.create_connection(("127.0.0.1", env.port), timeout=SHORT + SLACK + 5)


def tls(env: CpEnv) -> ssl.SSLSocket:
    ctx = env.pki.client_context()
    ctx.check_hostname = False
    return ctx.wrap_socket(tcp(env), server_hostname="127.0.0.1")


def recv_all(sock: socket.socket) -> bytes:
    """Everything until the CP closes the connection (or the socket timeout)."""
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ssl.SSLError, ConnectionError):
            return out
        if not chunk:
            return out
        out += chunk


def closed_within(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """What the CP sent before closing, and after how long; fails if it did not close."""
    start = time.monotonic()
    sock.settimeout(limit)
    data = recv_all(sock)
    took = time.monotonic() - start
    assert took < limit, f"connection still open after {took:.1f} s (got {data[:80]!r})"
    return data, took


def healthz_on(sock: ssl.SSLSocket) -> bytes:
    sock.sendall(HEALTHZ)
    sock.settimeout(5)
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-reply: {reply!r}"
        reply += chunk
    return reply


def start_cp(env: CpEnv, *flags: str) -> CpProcess:
    return env.start([*env.args(), *flags])


@pytest.fixture
def short_cp(env: CpEnv) -> Iterator[CpProcess]:
    """The CP with every timeout at SHORT; its log must stay clean."""
    cp = start_cp(
        env,
        "--tls-handshake-timeout-secs", str(SHORT),
        "--keepalive-timeout-secs", str(SHORT),
        "--body-read-timeout-secs", str(SHORT),
    )  # fmt: skip
    yield cp
    assert curl(env.curl("/healthz")).status == 200
    assert_clean_log(cp)


def test_handshake_never_started_is_dropped(env: CpEnv, short_cp: CpProcess) -> None:
    with tcp(env) as sock:
        closed_within(sock, SHORT + SLACK)


def test_idle_tls_connection_is_closed(env: CpEnv, short_cp: CpProcess) -> None:
    with tls(env) as sock:  # before any request
        closed_within(sock, SHORT + SLACK)
    with tls(env) as sock:  # after one
        assert b" 200 " in healthz_on(sock)
        closed_within(sock, SHORT + SLACK)


def test_drip_fed_body_gets_408_and_close(env: CpEnv, short_cp: CpProcess) -> None:
    with tls(env) as sock:
        sock.sendall(
            b"POST /v1/enroll HTTP/1.1\r\nHost: cp\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"token": "'
        )
        sock.settimeout(0.2)
        start, reply = time.monotonic(), b""
        while time.monotonic() - start < SHORT + SLACK and b"\r\n\r\n" not in reply:
            try:  # one byte every 0.2 s, never the whole body
                sock.sendall(b"a")
                reply += sock.recv(65536)
            except TimeoutError:
                continue
            except (ssl.SSLError, ConnectionError):
                break
        reply += closed_within(sock, SLACK)[0]
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert b"body not received within 1 s" in reply
    assert short_cp.lines("http: request dropped peer=127.0.0.1 reason=body not received")


def test_connection_cap_per_peer(env: CpEnv) -> None:
    cap = 3
    cp = start_cp(env, "--max-connections-per-peer", str(cap))
    held = [tls(env) for _ in range(cap)]
    try:
        for sock in held:
            assert b" 200 " in healthz_on(sock)
        # The next one from the same address completes TLS, then is closed unanswered.
        with tls(env) as extra:
            extra.sendall(HEALTHZ)
            data, _ = closed_within(extra, SLACK)
            assert data == b""
        line = cp.wait_log("http: connection refused peer=127.0.0.1 reason=over max-conn")
        assert line.endswith("max-connections-per-peer=3 suppressed=0"), line
        # A closed connection frees its slot.
        held.pop().close()
        time.sleep(0.3)
        with tls(env) as again:
            assert b" 200 " in healthz_on(again)
    finally:
        for sock in held:
            sock.close()
    assert_clean_log(cp)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--tls-handshake-timeout-secs", "0"),
        ("--keepalive-timeout-secs", "nan"),
        ("--body-read-timeout-secs", "-1"),
        ("--prime-timeout-secs", "1e9"),
        ("--max-connections-per-peer", "-1"),
    ],
)
def test_bad_limit_flags_are_one_line(env: CpEnv, flag: str, value: str) -> None:
    cp = env.start([*env.args(), flag, value], wait=False)
    assert cp.proc.wait(30) == 2
    lines = cp.log().strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], lines
