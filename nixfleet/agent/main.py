"""`nixfleet-agent`: the host daemon (seed 004, lifecycle §5).

Start-up refuses bad input with one line and exit 2, before touching the network:
the CP URL, the trust file, the agent key and SSH host key, the client cert (or
the bootstrap token to enrol with), the health-checks config, the state dir and
the current-system link. Then it enrols if needed (retrying while the CP is not
ready or unreachable), loads the reducer's state and pumps it until SIGTERM or
SIGINT. A CP that does not answer is a logged, retried failure, never an exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
from collections.abc import Sequence
from pathlib import Path

from nixfleet import __version__
from nixfleet.cli.app import OneLineParser, run
from nixfleet.core.agent import AgentSession
from nixfleet.core.agent_state import AgentState
from nixfleet.core.canonical import load_json
from nixfleet.core.errors import BadInput
from nixfleet.core.hostkey import load_host_private_key
from nixfleet.core.trust import Trust, parse_trust
from nixfleet.logsetup import configure_logging

from .activation import NixActivator
from .config import AgentConfig, add_agent_flags, config_from_args
from .csr import tls_key_pem
from .enroll import Identity, wait_or_stop
from .evidence import EvidenceSigner, load_host_key
from .health import HealthMonitor, load_health_config
from .manifests import ManifestFetcher
from .runtime import AgentRuntime, SystemClock
from .statedir import ManifestCache, StateDir
from .transport import HttpCpTransport

log = logging.getLogger("nixfleet.agent")

PROG = "nixfleet-agent"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
UPTIME = Path("/proc/uptime")
SWITCH_LOG = "switch.log"


def load_trust(path: Path) -> Trust:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read trust file {path} ({exc.strerror or exc})") from exc
    source = f"trust file {path}"
    return parse_trust(load_json(raw, source=source), source=source)


class TrustFile:
    """trust.json, re-read on use; a file that turns bad keeps the last good one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._trust = load_trust(path)

    def __call__(self) -> Trust:
        try:
            self._trust = load_trust(self.path)
        except BadInput as exc:
            log.warning("trust file unusable; keeping the last good one reason=%s", exc)
        return self._trust


def read_boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def read_uptime() -> int | None:
    try:
        return int(float(UPTIME.read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return None


def read_key_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read {what} {path} ({exc.strerror or exc})") from exc


async def pump_until_stopped(runtime: AgentRuntime, stop: asyncio.Event) -> None:
    """Run the pump; on SIGTERM abandon the action in flight rather than wait for it (a
    switch may take minutes): what a restart needs is already in the state dir, and an
    inline switch runs in its own session, like the transient unit it stands for."""
    pump = asyncio.create_task(runtime.run(stop))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({pump, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not pump.done():
            log.info("stopping; abandoning the action in flight")
            pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
    finally:
        stopping.cancel()


async def serve(cfg: AgentConfig) -> int:
    trust = TrustFile(cfg.trust_file)
    state_dir = StateDir.open(cfg.state_dir)
    # The SSH host key signs evidence; absent means unsigned unless it is also the
    # mTLS key (then it is required).
    uses_host_key = cfg.client_key is None
    host_key = load_host_key(cfg.ssh_host_key_file, required=uses_host_key)
    key_source = f"client key {cfg.client_key_path}"
    agent_key_bytes = read_key_bytes(cfg.client_key_path, "client key")
    agent_key = load_host_private_key(agent_key_bytes, source=key_source)
    key_pem = tls_key_pem(agent_key_bytes, source=key_source)
    health = HealthMonitor(load_health_config(cfg.health_checks_config), SystemClock().now)
    cache_keys = cfg.trusted_public_keys or trust().cache_keys
    activator = NixActivator(
        profile=cfg.system_profile,
        current_link=cfg.current_system_link,
        booted_link=cfg.booted_system_link,
        switch_lock=cfg.switch_lock,
        substituters=cfg.nix_substituters,
        trusted_public_keys=cache_keys,
        switch_timeout_secs=cfg.switch_timeout_secs,
        switch_log=cfg.state_dir / SWITCH_LOG,
    )
    current = activator.current_system()
    if current is None:
        raise BadInput(
            f"cannot read the running system from {cfg.current_system_link} "
            "(missing, or not a link into /nix/store)"
        )
    transport = HttpCpTransport(cfg.control_plane_url, ca_cert=cfg.ca_cert)
    identity = Identity(
        ca=transport,
        cert_path=cfg.client_cert,
        key=agent_key,
        key_pem=key_pem,
        machine_id=cfg.machine_id,
        token_path=cfg.bootstrap_token_file,
        renewal_fraction=cfg.renewal_threshold_fraction,
        retry_base_secs=min(cfg.poll_interval_secs, 10.0),
    )
    has_cert = identity.load()
    if not has_cert:
        identity.token()  # a missing or malformed token refuses start-up now

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "agent starting machine_id=%s cp=%s poll_interval=%g state_dir=%s current=%s",
        cfg.machine_id,
        cfg.control_plane_url,
        cfg.poll_interval_secs,
        cfg.state_dir,
        current,
    )
    try:
        if not has_cert and not await identity.enroll(lambda s: wait_or_stop(stop, s)):
            return 0
        rng = random.Random()
        session = AgentSession(
            AgentState.restore(
                hostname=cfg.machine_id, agent_version=__version__, persisted=state_dir.load()
            ),
            poll_interval_secs=cfg.poll_interval_secs,
            jitter=lambda: rng.uniform(0.8, 1.2),
        )
        runtime = AgentRuntime(
            session,
            hostname=cfg.machine_id,
            agent_version=__version__,
            clock=SystemClock(),
            transport=transport,
            activator=activator,
            manifests=ManifestFetcher(
                source=transport,
                cache=ManifestCache(cfg.state_dir),
                trust=trust,
                hostname=cfg.machine_id,
            ),
            state=state_dir,
            signer=EvidenceSigner(host_key),
            health=health,
            certs=identity,
            boot_id=read_boot_id(),
            uptime=read_uptime,
        )
        await health.start()
        runtime.boot(current)
        await pump_until_stopped(runtime, stop)
    finally:
        await health.stop()
        await transport.close()
        log.info("agent stopped")
    return 0


def _serve(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    configure_logging()
    return asyncio.run(serve(cfg))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="NixFleet agent: checks in with the control plane, fetches and "
        "activates closures, confirms or rolls back.",
    )
    add_agent_flags(parser)
    parser.set_defaults(func=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv, name=PROG)


if __name__ == "__main__":
    raise SystemExit(main())
