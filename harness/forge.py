"""A small HTTPS "forge" serving raw files, with its own private CA.

Like Forgejo's raw file URLs, a file `<dir>/<path>` is served at
`/<owner>/<repo>/raw/branch/<ref>/<path>` and, for convenience, at `/<path>`. The
TLS cert chains to a CA of the forge's own, so a client trusting only the system
store fails with a certificate verification error; pass `Forge.ca_cert` as
`SSL_CERT_FILE` or the CP's `--upstream-ca`.

Faults, switchable while running (`ForgeMode`): `fail` answers 503, `close` closes
the connection without an answer, `hang` holds each request until the mode changes or
the forge stops (for timeouts). With a token set, requests without
`Authorization: Bearer <token>` get 401.

In-process: `Forge.start(...)` serves on a thread (127.0.0.1, ephemeral port). As a
process, killable by PID:

    python -m harness.forge --dir D --port P --cert C --key K [--token T]

prints `forge listening port=<n>` once it accepts connections. A running process
switches modes through `POST /-/forge/mode` (body: the mode name; the bearer token
is required when one is set); `ForgeProcess.set_mode` does that.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import mimetypes
import os
import selectors
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from harness.pki import CertPaths, new_ca, new_server_cert, write_cert_and_key

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
CONTROL_PATH = "/-/forge/mode"
HANDSHAKE_TIMEOUT_SECS = 10.0
IDLE_TIMEOUT_SECS = 60.0
READY_LINE_PREFIX = "forge listening port="


class ForgeMode(StrEnum):
    OK = "ok"
    FAIL = "fail"
    """Answer every request 503."""
    CLOSE = "close"
    """Close each connection after reading the request, without an answer."""
    HANG = "hang"
    """Hold each request unanswered until the mode changes or the forge stops."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ForgeTls:
    """The forge's private CA and its server cert (SAN localhost + 127.0.0.1)."""

    ca_cert: Path
    cert: Path
    key: Path

    @classmethod
    def create(cls, dir: Path) -> ForgeTls:
        """Write a new forge CA (`forge-ca.crt`) and server cert/key under `dir`."""
        dir = Path(dir)
        ca_cert, ca_key = new_ca("nixfleet test forge CA")
        ca = write_cert_and_key(ca_cert, ca_key, dir / "forge-ca.crt", dir / "forge-ca.key")
        cert, key = new_server_cert(ca_cert, ca_key)
        srv: CertPaths = write_cert_and_key(cert, key, dir / "forge.crt", dir / "forge.key")
        return cls(ca_cert=ca.cert, cert=srv.cert, key=srv.key)

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only the forge CA."""
        return ssl.create_default_context(cafile=str(self.ca_cert))


@dataclass(frozen=True, slots=True, kw_only=True)
class ForgeRequest:
    method: str
    path: str
    authorization: str | None
    status: int
    """The status sent; 0 when the connection was closed without an answer."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ForgeAddress:
    port: int
    owner: str = "fleet"
    repo: str = "fleet"
    ref: str = "main"

    @property
    def base_url(self) -> str:
        return f"https://{HOST}:{self.port}"

    def url(self, path: str) -> str:
        """The raw URL `<base>/<owner>/<repo>/raw/branch/<ref>/<path>` of `<dir>/<path>`."""
        return f"{self.base_url}{self.raw_prefix}{urllib.parse.quote(path.lstrip('/'))}"

    def plain_url(self, path: str) -> str:
        return f"{self.base_url}/{urllib.parse.quote(path.lstrip('/'))}"

    @property
    def raw_prefix(self) -> str:
        return f"/{self.owner}/{self.repo}/raw/branch/{self.ref}/"


# --- the server ------------------------------------------------------------------------


class _State:
    """What the handler threads share; every field is read and written under `cond`."""

    def __init__(self, root: Path, address: ForgeAddress, token: str | None) -> None:
        self.root = root.resolve()
        self.address = address
        self.cond = threading.Condition()
        self.mode = ForgeMode.OK
        self.token = token
        self.stopping = False
        self.held = 0
        self.requests: list[ForgeRequest] = []

    def set_mode(self, mode: ForgeMode) -> None:
        with self.cond:
            self.mode = mode
            self.cond.notify_all()


class _ForgeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, ctx: ssl.SSLContext, state: _State) -> None:
        self.ssl_context = ctx
        self.state = state
        self._conns: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()
        self._conns_lock = threading.Lock()
        super().__init__((HOST, port), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS handshake on the connection's own thread, so a slow client blocks no one."""
        worker = threading.current_thread()
        with self._conns_lock:
            self._workers.add(worker)
        try:
            self._serve_connection(request, client_address)
        finally:
            with self._conns_lock:
                self._workers.discard(worker)

    def _serve_connection(self, raw: socket.socket, client_address: Any) -> None:
        raw.settimeout(HANDSHAKE_TIMEOUT_SECS)
        try:
            conn = self.ssl_context.wrap_socket(
                raw, server_side=True, do_handshake_on_connect=False
            )
        except (OSError, ssl.SSLError):
            raw.close()
            return
        with self._conns_lock:
            self._conns.add(conn)
        try:
            with self.state.cond:
                if self.state.stopping:
                    return
            conn.do_handshake()
            conn.settimeout(IDLE_TIMEOUT_SECS)
            super().finish_request(conn, client_address)
        except (OSError, ssl.SSLError):
            pass
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("forge: connection error from %s", client_address, exc_info=True)

    def drop_connections(self) -> None:
        """Shut every open connection down at the socket level, unblocking its thread."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)

    def open_connections(self) -> int:
        with self._conns_lock:
            return len(self._conns)

    def join_workers(self, timeout: float) -> None:
        """Wait for every connection thread (they are daemons, so socketserver does not)."""
        deadline = time.monotonic() + timeout
        with self._conns_lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    server: _ForgeServer
    protocol_version = "HTTP/1.1"
    server_version = "nixfleet-test-forge"

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if self._url_path() != CONTROL_PATH:
            self._reply(HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n")
            return
        if not self._authorized():
            self._reply(HTTPStatus.UNAUTHORIZED, b"unauthorized\n")
            return
        try:
            mode = ForgeMode(body.decode("utf-8").strip())
        except ValueError:
            self._reply(HTTPStatus.BAD_REQUEST, b"unknown mode\n")
            return
        self.server.state.set_mode(mode)
        self._reply(HTTPStatus.OK, f"{mode}\n".encode())

    def _handle(self, *, head: bool) -> None:
        state = self.server.state
        with state.cond:
            if state.mode is ForgeMode.HANG and not state.stopping:
                state.held += 1
                state.cond.notify_all()
                try:
                    state.cond.wait_for(lambda: state.mode is not ForgeMode.HANG or state.stopping)
                finally:
                    state.held -= 1
            mode, stopping = state.mode, state.stopping
        if stopping or mode is ForgeMode.CLOSE:
            self._drop()
            return
        if mode is ForgeMode.FAIL:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, b"forge unavailable\n", head=head)
            return
        if not self._authorized():
            self._reply(
                HTTPStatus.UNAUTHORIZED,
                b"unauthorized\n",
                head=head,
                extra={"WWW-Authenticate": 'Bearer realm="forge"'},
            )
            return
        target = self._file()
        if target is None:
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n", head=head)
            return
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self._reply(HTTPStatus.OK, target.read_bytes(), head=head, ctype=ctype)

    def _url_path(self) -> str:
        return urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)

    def _authorized(self) -> bool:
        state = self.server.state
        with state.cond:
            token = state.token
        return token is None or self.headers.get("Authorization") == f"Bearer {token}"

    def _file(self) -> Path | None:
        state = self.server.state
        path = self._url_path()
        prefix = state.address.raw_prefix
        rel = path[len(prefix) :] if path.startswith(prefix) else path.lstrip("/")
        if not rel:
            return None
        target = (state.root / rel).resolve()
        if not target.is_relative_to(state.root) or not target.is_file():
            return None
        return target

    def _reply(
        self,
        status: HTTPStatus,
        body: bytes,
        *,
        head: bool = False,
        ctype: str = "text/plain; charset=utf-8",
        extra: dict[str, str] | None = None,
    ) -> None:
        self._record(int(status))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _drop(self) -> None:
        self._record(0)
        self.close_connection = True
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.connection, socket.SHUT_RDWR)

    def _record(self, status: int) -> None:
        state = self.server.state
        entry = ForgeRequest(
            method=self.command,
            path=self.path,
            authorization=self.headers.get("Authorization"),
            status=status,
        )
        with state.cond:
            state.requests.append(entry)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("forge: " + format, *args)


def _server_context(tls: ForgeTls | tuple[Path, Path]) -> ssl.SSLContext:
    cert, key = (tls.cert, tls.key) if isinstance(tls, ForgeTls) else tls
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


# --- in-process -----------------------------------------------------------------------


class Forge:
    """A forge served from a thread of this process; `stop()` (or `with`) ends it."""

    def __init__(self, server: _ForgeServer, thread: threading.Thread, tls: ForgeTls) -> None:
        self._server = server
        self._thread = thread
        self.tls = tls

    @classmethod
    def start(
        cls,
        root: Path,
        *,
        tls: ForgeTls,
        token: str | None = None,
        port: int = 0,
        owner: str = "fleet",
        repo: str = "fleet",
        ref: str = "main",
    ) -> Forge:
        state = _State(Path(root), ForgeAddress(port=0, owner=owner, repo=repo, ref=ref), token)
        server = _ForgeServer(port, _server_context(tls), state)
        state.address = ForgeAddress(port=server.server_address[1], owner=owner, repo=repo, ref=ref)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="forge", daemon=True
        )
        thread.start()
        return cls(server, thread, tls)

    @property
    def address(self) -> ForgeAddress:
        return self._server.state.address

    @property
    def port(self) -> int:
        return self.address.port

    @property
    def base_url(self) -> str:
        return self.address.base_url

    @property
    def ca_cert(self) -> Path:
        return self.tls.ca_cert

    def url(self, path: str) -> str:
        return self.address.url(path)

    def plain_url(self, path: str) -> str:
        return self.address.plain_url(path)

    @property
    def mode(self) -> ForgeMode:
        state = self._server.state
        with state.cond:
            return state.mode

    def set_mode(self, mode: ForgeMode) -> None:
        self._server.state.set_mode(ForgeMode(mode))

    def fail(self) -> None:
        self.set_mode(ForgeMode.FAIL)

    def close_connections(self) -> None:
        self.set_mode(ForgeMode.CLOSE)

    def hang(self) -> None:
        self.set_mode(ForgeMode.HANG)

    def heal(self) -> None:
        self.set_mode(ForgeMode.OK)

    def set_token(self, token: str | None) -> None:
        state = self._server.state
        with state.cond:
            state.token = token

    @property
    def open_connections(self) -> int:
        """TCP connections being served right now (handshaking, active or keep-alive)."""
        return self._server.open_connections()

    @property
    def held(self) -> int:
        """Requests being held right now by `hang` mode."""
        state = self._server.state
        with state.cond:
            return state.held

    def wait_held(self, count: int = 1, *, timeout: float = 10.0) -> None:
        """Block until at least `count` requests are held; TimeoutError otherwise."""
        state = self._server.state
        with state.cond:
            if not state.cond.wait_for(lambda: state.held >= count, timeout):
                raise TimeoutError(
                    f"forge: {state.held} of {count} requests held after {timeout} s"
                )

    @property
    def requests(self) -> list[ForgeRequest]:
        """Every answered or dropped request so far, oldest first (a copy)."""
        state = self._server.state
        with state.cond:
            return list(state.requests)

    def stop(self) -> None:
        """Stop accepting, release hanging requests, close connections, join threads."""
        state = self._server.state
        with state.cond:
            if state.stopping:
                return
            state.stopping = True
            state.cond.notify_all()
        self._server.shutdown()
        self._server.drop_connections()
        self._server.server_close()
        self._server.join_workers(HANDSHAKE_TIMEOUT_SECS)
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- as a process -----------------------------------------------------------------------


class ForgeProcess:
    """`python -m harness.forge` as a child process; stop or kill it by its PID."""

    def __init__(
        self, proc: subprocess.Popen[bytes], address: ForgeAddress, tls: ForgeTls, token: str | None
    ) -> None:
        self.proc = proc
        self.address = address
        self.tls = tls
        self.token = token

    @classmethod
    def start(
        cls,
        root: Path,
        *,
        tls: ForgeTls,
        token: str | None = None,
        port: int = 0,
        owner: str = "fleet",
        repo: str = "fleet",
        ref: str = "main",
        stderr: Path | None = None,
        ready_timeout: float = 15.0,
    ) -> ForgeProcess:
        argv = [
            sys.executable, "-m", "harness.forge",
            "--dir", str(root), "--port", str(port),
            "--cert", str(tls.cert), "--key", str(tls.key),
            "--owner", owner, "--repo", repo, "--ref", ref,
        ]  # fmt: skip
        if token is not None:
            argv += ["--token", token]
        err = open(stderr, "ab") if stderr is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err)
        finally:
            if stderr is not None and not isinstance(err, int):
                err.close()
        try:
            bound = _read_ready_port(proc, ready_timeout)
        except BaseException:
            _terminate(proc)
            raise
        address = ForgeAddress(port=bound, owner=owner, repo=repo, ref=ref)
        return cls(proc, address, tls, token)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        return self.address.port

    @property
    def base_url(self) -> str:
        return self.address.base_url

    @property
    def ca_cert(self) -> Path:
        return self.tls.ca_cert

    def url(self, path: str) -> str:
        return self.address.url(path)

    def plain_url(self, path: str) -> str:
        return self.address.plain_url(path)

    def set_mode(self, mode: ForgeMode, *, timeout: float = 5.0) -> None:
        """Switch the running process's mode through its control endpoint."""
        req = urllib.request.Request(
            self.address.base_url + CONTROL_PATH, data=str(ForgeMode(mode)).encode(), method="POST"
        )
        if self.token is not None:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=timeout, context=self.tls.client_context()):
            pass

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL if needed."""
        _terminate(self.proc)

    def kill(self) -> None:
        """SIGKILL (a crash), then reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _read_ready_port(proc: subprocess.Popen[bytes], timeout: float) -> int:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"forge pid {proc.pid}: not ready after {timeout:.1f} s")
            if not sel.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"forge pid {proc.pid}: exited ({proc.wait()}) before ready")
            buf += chunk
    proc.stdout.close()
    line = buf.split(b"\n", 1)[0].decode("utf-8", "replace")
    if not line.startswith(READY_LINE_PREFIX):
        raise RuntimeError(f"forge pid {proc.pid}: unexpected first line {line!r}")
    return int(line[len(READY_LINE_PREFIX) :])


def _terminate(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.forge", description=__doc__.split("\n")[0])
    p.add_argument("--dir", type=Path, required=True, help="directory whose files are served")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: ephemeral)")
    p.add_argument("--cert", type=Path, required=True, help="server certificate (PEM)")
    p.add_argument("--key", type=Path, required=True, help="server key (PEM)")
    p.add_argument("--token", help="require Authorization: Bearer <token>")
    p.add_argument("--owner", default="fleet")
    p.add_argument("--repo", default="fleet")
    p.add_argument("--ref", default="main")
    args = p.parse_args(argv)
    state = _State(
        args.dir, ForgeAddress(port=0, owner=args.owner, repo=args.repo, ref=args.ref), args.token
    )
    server = _ForgeServer(args.port, _server_context((args.cert, args.key)), state)
    bound = server.server_address[1]
    state.address = ForgeAddress(port=bound, owner=args.owner, repo=args.repo, ref=args.ref)
    sys.stdout.write(f"{READY_LINE_PREFIX}{bound}\n")
    sys.stdout.flush()
    # The parent reads one line and closes its end; later writes must not hit a dead pipe.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
