"""A forge that accepts connections and never answers (issue 9 item 16): the whole prime,
sidecars included, is bounded by `--prime-timeout-secs` (default 10 s), the CP says what
it waited for and starts from the build-time artifact."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from harness.cpenv import MakeEnv, assert_clean_log, curl, declared

SLACK = 6.0
"""Start-up time on top of the bound: interpreter, migrations, TLS material."""


class SilentServer:
    """Accepts TCP connections and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()
        self.thread.join(5)


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


@pytest.mark.parametrize(("flags", "bound"), [((), 10.0), (("--prime-timeout-secs", "2"), 2.0)])
def test_hanging_forge_delays_the_listener_by_the_bound_only(
    make_env: MakeEnv, silent: SilentServer, flags: tuple[str, ...], bound: float
) -> None:
    env = make_env(declared("h1"), with_forge=False)
    build_time = env.write_build_time(*env.publish())
    argv = [
        *env.args(build_time=build_time),
        "--channel-refs-artifact-url", silent.url("fleet.resolved.json"),
        "--revocations-artifact-url", silent.url("revocations.json"),
        "--bootstrap-nonces-artifact-url", silent.url("bootstrap-nonces.json"),
        *flags,
    ]  # fmt: skip
    start = time.monotonic()
    cp = env.start(argv, timeout=bound + SLACK + 30)
    took = time.monotonic() - start
    assert bound - 0.5 < took < bound + SLACK, f"listening after {took:.1f} s"
    assert silent.held, "the CP never connected to the forge"

    gave_up = cp.lines("prime gave up")
    assert gave_up[0].endswith(
        f"channel-refs: prime gave up after {bound:g} s waiting for "
        f"{silent.url('fleet.resolved.json')}; "
        "starting from the snapshot cache or the build-time artifact"
    ), gave_up
    # The sidecars share the same bound and are named too, after the fleet artifact.
    assert [ln.split(": prime")[0].split()[-1] for ln in gave_up] == [
        "channel-refs",
        "revocations",
        "bootstrap-nonces",
    ], gave_up
    assert curl(env.curl("/healthz")).status == 200
    assert_clean_log(cp)
