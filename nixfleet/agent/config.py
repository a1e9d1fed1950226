"""`nixfleet-agent` configuration: the seed 004 flags, env `NIXFLEET_AGENT_<FLAG>`, defaults.

Seed 004 names the agent's flags; each is mirrored by an environment variable
(`--poll-interval` ⇐ `NIXFLEET_AGENT_POLL_INTERVAL`; the URL also as the reference's
`NIXFLEET_AGENT_CP_URL`). Every path a test must redirect is a flag whose default is
the production path: the system profile, `/run/current-system`, `/run/booted-system`.
The binary cache is nix's own configuration unless `--nix-substituter` /
`--trusted-public-key` (or trust.json `cacheKeys`) say otherwise.

Validation here is shape only (one-line `BadInput`); files are read in `main`.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from nixfleet.cli.envflags import add_env_flag, env_name
from nixfleet.core.errors import BadInput

ENV_PREFIX = "NIXFLEET_AGENT_"
URL_ALIAS_ENV = "NIXFLEET_AGENT_CP_URL"

DEFAULT_POLL_INTERVAL_SECS = 60.0
DEFAULT_TRUST_FILE = "/etc/nixfleet/agent/trust.json"
DEFAULT_CLIENT_CERT = "/var/lib/nixfleet/agent-cert.pem"
DEFAULT_STATE_DIR = "/var/lib/nixfleet-agent"
DEFAULT_SSH_HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"
DEFAULT_HEALTH_CHECKS = "/etc/nixfleet/agent/health-checks.json"
DEFAULT_SYSTEM_PROFILE = "/nix/var/nix/profiles/system"
DEFAULT_CURRENT_SYSTEM = "/run/current-system"
DEFAULT_BOOTED_SYSTEM = "/run/booted-system"
DEFAULT_SWITCH_LOCK = "/run/nixos/switch-to-configuration.lock"
DEFAULT_RENEWAL_THRESHOLD = 0.5
DEFAULT_SWITCH_TIMEOUT_SECS = 300.0
# Bounds of the interval flags: a typo (`1e9`, `0.001`) is refused at start rather
# than silencing the host for decades or hammering the CP.
POLL_INTERVAL_BOUNDS = (1.0, 3600.0)
SWITCH_TIMEOUT_BOUNDS = (1.0, 3600.0)

COMPLIANCE_GATE_MODES = ("auto", "disabled", "permissive", "enforce")


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    control_plane_url: str
    machine_id: str
    poll_interval_secs: float = DEFAULT_POLL_INTERVAL_SECS
    trust_file: Path = Path(DEFAULT_TRUST_FILE)
    ca_cert: Path | None = None
    client_cert: Path = Path(DEFAULT_CLIENT_CERT)
    client_key: Path | None = None
    """None: the SSH host key is the mTLS key (protocol §3.4)."""
    bootstrap_token_file: Path | None = None
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    compliance_gate_mode: str = "auto"
    ssh_host_key_file: Path = Path(DEFAULT_SSH_HOST_KEY)
    health_checks_config: Path = Path(DEFAULT_HEALTH_CHECKS)
    renewal_threshold_fraction: float = DEFAULT_RENEWAL_THRESHOLD
    system_profile: Path = Path(DEFAULT_SYSTEM_PROFILE)
    current_system_link: Path = Path(DEFAULT_CURRENT_SYSTEM)
    booted_system_link: Path = Path(DEFAULT_BOOTED_SYSTEM)
    switch_lock: Path = Path(DEFAULT_SWITCH_LOCK)
    nix_substituters: tuple[str, ...] = ()
    """Empty: nix's own `substituters`."""
    trusted_public_keys: tuple[str, ...] = ()
    """Empty: trust.json `cacheKeys`, and if those are empty too, nix's own keys."""
    switch_timeout_secs: float = DEFAULT_SWITCH_TIMEOUT_SECS

    @property
    def client_key_path(self) -> Path:
        return self.client_key if self.client_key is not None else self.ssh_host_key_file


def add_agent_flags(p: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    env = os.environ if environ is None else environ

    def flag(name: str, **kw: object) -> None:
        add_env_flag(p, name, prefix=ENV_PREFIX, environ=env, **kw)

    url_default = env.get(URL_ALIAS_ENV)
    flag("--control-plane-url", default=url_default, help="https://host:port of the CP")
    flag("--machine-id", default=None, help="this host's id; must match the client-cert CN "
         "(default: the system hostname)")  # fmt: skip
    flag("--poll-interval", default=str(int(DEFAULT_POLL_INTERVAL_SECS)),
         help="seconds between checkins, 1 to 3600 (e.g. 60 or 60s)")  # fmt: skip
    flag("--trust-file", type=Path, default=Path(DEFAULT_TRUST_FILE), help="trust.json")
    flag("--ca-cert", type=Path, default=None,
         help="CA the CP's TLS cert chains to (default: the system store)")  # fmt: skip
    flag("--client-cert", type=Path, default=Path(DEFAULT_CLIENT_CERT),
         help="agent client certificate (written by enrollment)")  # fmt: skip
    flag("--client-key", type=Path, default=None,
         help="mTLS private key (default: the SSH host key)")  # fmt: skip
    flag("--bootstrap-token-file", type=Path, default=None,
         help="bootstrap token: enrol via /v1/enroll when the client cert is absent")  # fmt: skip
    flag("--state-dir", type=Path, default=Path(DEFAULT_STATE_DIR), help="agent state dir")
    flag("--compliance-gate-mode", default="auto", help="auto|disabled|permissive|enforce")
    flag("--ssh-host-key-file", type=Path, default=Path(DEFAULT_SSH_HOST_KEY),
         help="ed25519 host key: CSR, mTLS key, evidence signatures")  # fmt: skip
    flag("--health-checks-config", type=Path, default=Path(DEFAULT_HEALTH_CHECKS),
         help="health probes JSON (missing: no probes)")  # fmt: skip
    flag("--renewal-threshold-fraction", default=str(DEFAULT_RENEWAL_THRESHOLD),
         help="renew the cert when less than this fraction of its validity remains")  # fmt: skip
    flag("--system-profile", type=Path, default=Path(DEFAULT_SYSTEM_PROFILE),
         help="the nix-env profile activation sets")  # fmt: skip
    flag("--current-system-link", type=Path, default=Path(DEFAULT_CURRENT_SYSTEM),
         help="link to the running system")  # fmt: skip
    flag("--booted-system-link", type=Path, default=Path(DEFAULT_BOOTED_SYSTEM),
         help="link to the booted system")  # fmt: skip
    flag("--switch-lock", type=Path, default=Path(DEFAULT_SWITCH_LOCK),
         help="the lock switch-to-configuration holds while it runs")  # fmt: skip
    flag("--switch-timeout-secs", default=str(int(DEFAULT_SWITCH_TIMEOUT_SECS)),
         help="bound on waiting for a switch or rollback to settle, 1 to 3600 s")  # fmt: skip
    # Repeatable; the environment holds a whitespace-separated list (nix's own syntax).
    for name, what in (
        ("--nix-substituter", "binary cache URL to realise closures from (repeatable)"),
        ("--trusted-public-key", "nix cache key to trust (repeatable; default trust.json "
                                 "cacheKeys)"),
    ):  # fmt: skip
        p.add_argument(name, action="append", default=None,
                       help=f"{what} [env {env_name(ENV_PREFIX, name)}]")  # fmt: skip


def _seconds(text: str, flag: str, bounds: tuple[float, float]) -> float:
    raw = text.strip()
    body = raw[:-1] if raw.endswith("s") else raw
    try:
        value = float(body)
    except ValueError:
        raise BadInput(f"{flag}: expected seconds, got {text!r}") from None
    low, high = bounds
    if not low <= value <= high:  # also refuses nan and inf
        raise BadInput(f"{flag}: must be between {low:g} and {high:g} seconds, got {text!r}")
    return value


def _url(text: str | None) -> str:
    if not text:
        raise BadInput("--control-plane-url is required (or NIXFLEET_AGENT_CONTROL_PLANE_URL)")
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise BadInput(f"--control-plane-url: expected https://HOST[:PORT], got {text!r}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise BadInput(f"--control-plane-url: bad port in {text!r}") from None
    return text.rstrip("/")


def _list(values: list[str] | None, name: str, env: Mapping[str, str]) -> tuple[str, ...]:
    if values:
        return tuple(v for value in values for v in value.split())
    return tuple(env.get(env_name(ENV_PREFIX, name), "").split())


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> AgentConfig:
    env = os.environ if environ is None else environ
    machine_id = (args.machine_id or socket.gethostname()).strip()
    if not machine_id:
        raise BadInput("--machine-id: empty")
    mode = str(args.compliance_gate_mode).strip().lower()
    if mode not in COMPLIANCE_GATE_MODES:
        raise BadInput(
            f"--compliance-gate-mode: {args.compliance_gate_mode!r} is not one of "
            + "|".join(COMPLIANCE_GATE_MODES)
        )
    try:
        fraction = float(args.renewal_threshold_fraction)
    except ValueError:
        raise BadInput("--renewal-threshold-fraction: expected a number in (0, 1)") from None
    if not 0 < fraction < 1:
        raise BadInput("--renewal-threshold-fraction: expected a number in (0, 1)")
    return AgentConfig(
        control_plane_url=_url(args.control_plane_url),
        machine_id=machine_id,
        poll_interval_secs=_seconds(
            str(args.poll_interval), "--poll-interval", POLL_INTERVAL_BOUNDS
        ),
        trust_file=args.trust_file,
        ca_cert=args.ca_cert,
        client_cert=args.client_cert,
        client_key=args.client_key,
        bootstrap_token_file=args.bootstrap_token_file,
        state_dir=args.state_dir,
        compliance_gate_mode=mode,
        ssh_host_key_file=args.ssh_host_key_file,
        health_checks_config=args.health_checks_config,
        renewal_threshold_fraction=fraction,
        system_profile=args.system_profile,
        current_system_link=args.current_system_link,
        booted_system_link=args.booted_system_link,
        switch_lock=args.switch_lock,
        nix_substituters=_list(args.nix_substituter, "--nix-substituter", env),
        trusted_public_keys=_list(args.trusted_public_key, "--trusted-public-key", env),
        switch_timeout_secs=_seconds(
            str(args.switch_timeout_secs), "--switch-timeout-secs", SWITCH_TIMEOUT_BOUNDS
        ),
    )
