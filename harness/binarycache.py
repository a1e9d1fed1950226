"""A real Nix binary cache: a `file://` cache dir filled with signed closures by real
`nix copy`, served over HTTP on 127.0.0.1 by a process of its own (stoppable by PID).

    cache = BinaryCache.create(tmp / "cache", source=builder).start()
    cache.push(path)              # nix copy --to 'file://DIR?compression=zstd&secret-key=K' PATH
    cache.url, cache.public_key   # substituters / trusted-public-keys (trust.json cacheKeys)
    cache.push_unknown(path)      # signed by a second key nobody trusts
    cache.outage()                # 503 on every request; outage(OutageMode.DROP) closes
                                  # connections unanswered; outage(OutageMode.DOWN) stops the
                                  # server process (connection refused)
    cache.heal(); cache.stop()

The server is `python -m harness.binarycache --dir D --port P --mode-file F --log-file L`;
it prints `binary cache listening port=<n>` once it accepts connections, reads the
mode file on every request (`ok`, `503`, `drop`) and appends `<METHOD> <path>
<status>` lines to the log file (status 0: dropped).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from harness.nixfixture import NixBuilder, NixCommandError
from nixfleet.core.closure import StorePath, parse_store_path

HOST = "127.0.0.1"
READY_LINE_PREFIX = "binary cache listening port="
CACHE_INFO = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n"


class OutageMode(StrEnum):
    UNAVAILABLE = "503"
    DROP = "drop"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class CacheKey:
    """A Nix binary-cache signing key pair (`nix-store --generate-binary-cache-key`)."""

    name: str
    secret_file: Path
    public_file: Path

    @property
    def public_key(self) -> str:
        """`<name>:<base64>`, as `trusted-public-keys` and trust.json `cacheKeys` take it."""
        return self.public_file.read_text().strip()


@dataclass(frozen=True, slots=True)
class CacheRequest:
    method: str
    path: str
    status: int


def _stop_pid(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


class BinaryCache:
    """One cache dir, its keys and (while started) its HTTP server process."""

    def __init__(self, dir: Path, source: NixBuilder, key: CacheKey, unknown_key: CacheKey):
        self.dir = dir
        self.source = source
        self.key = key
        self.unknown_key = unknown_key
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._down = False

    # --- layout -----------------------------------------------------------------------

    @property
    def cache_dir(self) -> Path:
        return self.dir / "cache"

    @property
    def mode_file(self) -> Path:
        return self.dir / "server" / "mode"

    @property
    def log_file(self) -> Path:
        return self.dir / "server" / "requests.log"

    @property
    def stderr_file(self) -> Path:
        return self.dir / "server" / "stderr.log"

    @classmethod
    def create(
        cls,
        dir: Path,
        source: NixBuilder,
        *,
        key_name: str = "fleet-cache-1",
        unknown_key_name: str = "unknown-cache-1",
    ) -> BinaryCache:
        """Make the cache dir and generate both key pairs (not started yet)."""
        (dir / "cache").mkdir(parents=True, exist_ok=True)
        (dir / "server").mkdir(exist_ok=True)
        keys = dir / "keys"
        keys.mkdir(exist_ok=True)
        (dir / "cache" / "nix-cache-info").write_text(CACHE_INFO)
        made = []
        for name, stem in ((key_name, "cache"), (unknown_key_name, "unknown")):
            k = CacheKey(name, keys / f"{stem}.sec", keys / f"{stem}.pub")
            source.run(
                [
                    "nix-store",
                    "--generate-binary-cache-key",
                    name,
                    str(k.secret_file),
                    str(k.public_file),
                ]
            )
            k.secret_file.chmod(0o600)
            made.append(k)
        return cls(dir, source, made[0], made[1])

    # --- keys and URL -----------------------------------------------------------------

    @property
    def public_key(self) -> str:
        return self.key.public_key

    @property
    def unknown_public_key(self) -> str:
        return self.unknown_key.public_key

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("binary cache not started")
        return f"http://{HOST}:{self.port}"

    def file_url(self, key: CacheKey | None) -> str:
        url = f"file://{self.cache_dir}?compression=zstd"
        return url if key is None else f"{url}&secret-key={key.secret_file}"

    # --- filling ----------------------------------------------------------------------

    def push(self, path: StorePath | str) -> None:
        """Copy `path` and its closure into the cache, signed by the trusted key."""
        self._push(path, self.key)

    def push_unknown(self, path: StorePath | str) -> None:
        """Copy it signed only by the second key (which no host trusts)."""
        self._push(path, self.unknown_key)

    def push_unsigned(self, path: StorePath | str) -> None:
        self._push(path, None)

    def _push(self, path: StorePath | str, key: CacheKey | None) -> None:
        p = path.path if isinstance(path, StorePath) else path
        self.source.run(["nix", "copy", "--to", self.file_url(key), p])

    def narinfo(self, path: StorePath | str) -> Path:
        sp = path if isinstance(path, StorePath) else parse_store_path(path)
        return self.cache_dir / f"{sp.hash}.narinfo"

    def has(self, path: StorePath | str) -> bool:
        return self.narinfo(path).is_file()

    def signers(self, path: StorePath | str) -> list[str]:
        """Key names of the `Sig:` lines of the path's narinfo."""
        lines = self.narinfo(path).read_text().splitlines()
        return [ln.split(":", 2)[1].strip() for ln in lines if ln.startswith("Sig:")]

    # --- the server process -----------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Self:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self._write_mode("ok")
        argv = [
            sys.executable,
            "-m",
            "harness.binarycache",
            "--dir",
            str(self.cache_dir),
            "--port",
            str(self.port or 0),
            "--mode-file",
            str(self.mode_file),
            "--log-file",
            str(self.log_file),
        ]
        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
        with self.stderr_file.open("ab") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=env)
        self.proc = proc
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or proc.poll() is not None:
                _stop_pid(proc)
                self.proc = None
                raise RuntimeError(
                    f"binary cache server did not start: {self.stderr_file.read_text()[-2000:]}"
                )
            ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.2))
            if ready:
                chunk = os.read(proc.stdout.fileno(), 256)
                if not chunk:
                    continue
                line += chunk
        proc.stdout.close()
        text = line.decode().strip()
        if not text.startswith(READY_LINE_PREFIX):
            _stop_pid(proc)
            self.proc = None
            raise RuntimeError(f"binary cache server said {text!r}")
        self.port = int(text[len(READY_LINE_PREFIX) :])
        self._down = False
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def outage(self, mode: OutageMode = OutageMode.UNAVAILABLE) -> None:
        """503 on every request, or drop connections, or stop the process (refused)."""
        if mode is OutageMode.DOWN:
            self._stop_proc()
            self._down = True
        else:
            self._write_mode(mode.value)

    def heal(self) -> None:
        self._write_mode("ok")
        if self._down:
            self.start()

    def stop(self) -> None:
        self._stop_proc()

    def _stop_proc(self) -> None:
        if self.proc is not None:
            _stop_pid(self.proc)
            self.proc = None

    def _write_mode(self, mode: str) -> None:
        tmp = self.mode_file.with_suffix(".tmp")
        tmp.write_text(mode + "\n")
        tmp.replace(self.mode_file)

    def requests(self) -> list[CacheRequest]:
        if not self.log_file.exists():
            return []
        out = []
        for ln in self.log_file.read_text().splitlines():
            parts = ln.split(" ")
            if len(parts) == 3:
                out.append(CacheRequest(parts[0], parts[1], int(parts[2])))
        return out

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- the server (runs as its own process) -----------------------------------------------


class _CacheServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], handler: Any, mode_file: Path, log_file: Path):
        super().__init__(addr, handler)
        self.mode_file = mode_file
        self.log_file = log_file

    def mode(self) -> str:
        try:
            return self.mode_file.read_text().strip() or "ok"
        except OSError:
            return "ok"

    def record(self, method: str, path: str, status: int) -> None:
        with self.log_file.open("a") as f:
            f.write(f"{method} {path} {status}\n")


class _CacheHandler(SimpleHTTPRequestHandler):
    server: _CacheServer

    def do_GET(self) -> None:
        if not self._fault():
            super().do_GET()

    def do_HEAD(self) -> None:
        if not self._fault():
            super().do_HEAD()

    def _fault(self) -> bool:
        mode = self.server.mode()
        if mode == OutageMode.UNAVAILABLE.value:
            body = b"binary cache unavailable\n"
            self.send_response(HTTPStatus.SERVICE_UNAVAILABLE)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return True
        if mode == OutageMode.DROP.value:
            self.server.record(self.command, self.path, 0)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return True
        return False

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        status = code.value if isinstance(code, HTTPStatus) else code
        self.server.record(self.command, self.path, int(status) if str(status).isdigit() else 0)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(directory: Path, port: int, mode_file: Path, log_file: Path) -> None:
    handler = functools.partial(_CacheHandler, directory=str(directory))
    server = _CacheServer((HOST, port), handler, mode_file, log_file)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{READY_LINE_PREFIX}{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.binarycache")
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--mode-file", type=Path, required=True)
    ap.add_argument("--log-file", type=Path, required=True)
    a = ap.parse_args(argv)
    serve(a.dir, a.port, a.mode_file, a.log_file)
    return 0


__all__ = ["BinaryCache", "CacheKey", "CacheRequest", "NixCommandError", "OutageMode"]

if __name__ == "__main__":
    raise SystemExit(main())
