"""A software TPM (swtpm in socket mode) that a test or the harness starts and stops.

Each instance has its own state dir and two free consecutive loopback ports (server,
control: the `swtpm:` TCTI assumes control = server + 1), so
pytest-xdist workers and parallel runs never share one. It starts with
`--flags not-need-init,startup-clear` (without them every command answers 0x101 until
an init and a TPM2_Startup, docs/environment.md "TPM: swtpm"), and is ready when its
server port accepts (about 60 ms). `stop()` sends SIGTERM to its PID and waits for the
exit: swtpm saves its state (persistent keys included) on the way out.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import TpmError

READY_SECS = 10.0
STOP_SECS = 5.0
INSTALL = "install swtpm (apt-get install swtpm swtpm-tools)"


def missing() -> str | None:
    """Why no swtpm can start here, in one line (None: it can)."""
    if shutil.which("swtpm") is None:
        return f"no swtpm binary on PATH: {INSTALL}"
    return None


def _free_pair() -> int:
    """A free port P with P+1 free too: the `swtpm:` TCTI takes the control channel
    at the server port + 1, whatever swtpm was told."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise TpmError("no two consecutive free ports on 127.0.0.1 for swtpm")


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Swtpm:
    state_dir: Path
    port: int
    ctrl_port: int
    proc: subprocess.Popen[bytes]

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @classmethod
    def start(cls, state_dir: Path) -> Swtpm:
        """Start one on free ports with `state_dir` (created; an existing TPM state in
        it is kept, so a restarted swtpm still holds its persistent keys)."""
        why = missing()
        if why is not None:
            raise TpmError(why)
        state_dir.mkdir(parents=True, exist_ok=True)
        # Free ports can be taken between the probe and swtpm's bind: retry a few times.
        last = ""
        for _attempt in range(5):
            port = _free_pair()
            ctrl = port + 1
            log = state_dir / "swtpm.log"
            argv = [
                "swtpm", "socket", "--tpm2",
                "--tpmstate", f"dir={state_dir}",
                "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
                "--flags", "not-need-init,startup-clear",
                "--log", f"file={log},level=1",
            ]  # fmt: skip
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            tpm = cls(state_dir=state_dir, port=port, ctrl_port=ctrl, proc=proc)
            deadline = time.monotonic() + READY_SECS
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                if _accepts(port):
                    return tpm
                time.sleep(0.02)
            tpm.stop()
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            last = (err.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise TpmError(f"swtpm did not start in {state_dir} ({last})")

    def stop(self) -> None:
        """SIGTERM and wait (it saves state); SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_SECS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> Swtpm:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
