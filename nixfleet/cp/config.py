"""`nixfleet-control-plane serve` configuration: flags, env `NIXFLEET_CP_<FLAG>`, defaults."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from nixfleet.agent.config import DEFAULT_SWITCH_TIMEOUT_SECS, SWITCH_TIMEOUT_BOUNDS
from nixfleet.cli.envflags import add_env_flag
from nixfleet.core.agent import MIN_CONFIRM_WINDOW_SECS
from nixfleet.core.errors import BadInput

ENV_PREFIX = "NIXFLEET_CP_"
DEFAULT_LISTEN = "0.0.0.0:8443"
DEFAULT_DB = "/var/lib/nixfleet-cp/state.db"
DEFAULT_TRUST = "/etc/nixfleet/cp/trust.json"
JOURNAL_FILE = "operator-journal.jsonl"
DEFAULT_PRIME_TIMEOUT_SECS = 10.0
DEFAULT_BODY_READ_TIMEOUT_SECS = 30.0
DEFAULT_HANDSHAKE_TIMEOUT_SECS = 10.0
DEFAULT_KEEPALIVE_TIMEOUT_SECS = 75.0
"""Above the agents' 60 s poll and their own 70 s idle drop (agent/transport.py)."""
DEFAULT_MAX_CONNECTIONS_PER_PEER = 1024
MAX_TIMEOUT_SECS = 3600.0
MIN_HEALTH_FAILURE_SECS = 10
"""Two probe runs at the agents' 5 s interval floor: one failed run never fails a host."""
CONFIRM_MARGIN_SECS = 10
"""What a confirm window must leave after the agents' longest switch for the confirm
itself: the default 360 s against the agents' 300 s switch is safe, below 310 s is not
(docs/hardening.md)."""


def confirm_window_problem(window_secs: float, switch_timeout_secs: float) -> str | None:
    """Why a confirm window is unsafe for agents whose switch may take up to
    `switch_timeout_secs` (None: it is safe). A switch that outlasts the window has its
    dispatch rolled back by the CP, its late confirm answered 410 and the host rolled
    back by its agent: every slow host of a rollout, each release (the cascade)."""
    least = switch_timeout_secs + CONFIRM_MARGIN_SECS
    if window_secs >= least:
        return None
    return (
        f"--confirm-deadline-secs {window_secs:g} is below the agents' switch timeout "
        f"({switch_timeout_secs:g} s, --agent-switch-timeout-secs) + {CONFIRM_MARGIN_SECS} s: "
        "a switch that runs that long outlasts the window, the CP rolls the host back, "
        f"answers its confirm 410 and the agent rolls back too; use ≥ {least:g}"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Upstream:
    """A signed artifact polled over HTTPS: the document and its detached `.sig`."""

    artifact_url: str
    signature_url: str
    token_file: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimits:
    """What the listener tolerates from one connection (see listener.py)."""

    handshake_timeout_secs: float = DEFAULT_HANDSHAKE_TIMEOUT_SECS
    keepalive_timeout_secs: float = DEFAULT_KEEPALIVE_TIMEOUT_SECS
    max_connections_per_peer: int = DEFAULT_MAX_CONNECTIONS_PER_PEER


@dataclass(frozen=True, slots=True, kw_only=True)
class CpConfig:
    host: str
    port: int
    tls_cert: Path | None
    tls_key: Path | None
    client_ca: Path | None
    trust_file: Path
    db_path: Path | None
    agent_cn_suffix: str
    artifact: Path | None = None
    signature: Path | None = None
    channel_refs: Upstream | None = None
    revocations: Upstream | None = None
    bootstrap_nonces: Upstream | None = None
    upstream_ca: Path | None = None
    upstream_label: str = "forgejo"
    fleet_ca_cert: Path | None = None
    fleet_ca_key: Path | None = None
    agent_cert_validity_secs: int = 2_592_000
    audit_log: Path | None = None
    rollouts_dir: Path | None = None
    freshness_window_secs: int = 2_592_000
    confirm_deadline_secs: int = 360
    agent_switch_timeout_secs: float = DEFAULT_SWITCH_TIMEOUT_SECS
    health_failure_secs: int = 60
    tick_interval_secs: float = 30.0
    poll_interval_secs: float = 60.0
    sweep_interval_secs: float = 30.0
    prime_timeout_secs: float = DEFAULT_PRIME_TIMEOUT_SECS
    poll_timeout_secs: float = 15.0
    max_body_bytes: int = 1_048_576
    body_read_timeout_secs: float = DEFAULT_BODY_READ_TIMEOUT_SECS
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    snapshot_cache: Path | None = None
    operator_journal: Path | None = None
    strict: bool = False


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    def flag(name: str, **kw: object) -> None:
        add_env_flag(p, name, prefix=ENV_PREFIX, **kw)  # type: ignore[arg-type]

    flag("--listen", default=DEFAULT_LISTEN, help="address:port to listen on")
    flag("--tls-cert", type=Path, help="server certificate (PEM)")
    flag("--tls-key", type=Path, help="server key (PEM)")
    flag("--client-ca", type=Path, help="CA that agent and operator certs chain to")
    flag("--trust-file", type=Path, default=Path(DEFAULT_TRUST), help="trust.json")
    flag("--db-path", type=Path, default=Path(DEFAULT_DB), help="SQLite state DB")
    flag("--agent-cn-suffix", required=True, help="agent certs are agent-<id>.<suffix>")
    flag("--artifact", type=Path, help="build-time fleet.resolved.json (fallback)")
    flag("--signature", type=Path, help="build-time fleet.resolved.json.sig (fallback)")
    for kind in ("channel-refs", "revocations", "bootstrap-nonces"):
        flag(f"--{kind}-artifact-url", help=f"HTTPS URL of the signed {kind} artifact")
        flag(f"--{kind}-signature-url", help="its .sig URL (default: artifact URL + .sig)")
        flag(f"--{kind}-token-file", type=Path, help="bearer token file, re-read each poll")
    flag("--upstream-ca", type=Path, help="extra CA for upstream TLS (system store is used too)")
    flag("--upstream-label", default="forgejo", help="upstream name in poll log lines")
    flag("--fleet-ca-cert", type=Path, help="fleet CA certificate for enroll/renew")
    flag("--fleet-ca-key", type=Path, help="fleet CA key for enroll/renew")
    flag("--agent-cert-validity-secs", type=int, default=2_592_000, help="issued cert lifetime")
    flag("--audit-log", type=Path, help="issuance audit log (JSON lines)")
    flag("--rollouts-dir", type=Path, help="directory of <rolloutId>.json{,.sig} manifests")
    flag("--freshness-window-secs", type=int, default=2_592_000, help="sidecar freshness window")
    flag("--confirm-deadline-secs", type=int, default=360, help="confirm window per dispatch")
    flag(
        "--agent-switch-timeout-secs",
        type=float,
        default=DEFAULT_SWITCH_TIMEOUT_SECS,
        help="the agents' --switch-timeout-secs: the confirm window must exceed it by "
        f"{CONFIRM_MARGIN_SECS} s",
    )
    flag(
        "--health-failure-secs",
        type=int,
        default=60,
        help="a Healthy or Soaked host whose probes have not all passed for this long is "
        "marked Failed (H11)",
    )
    flag("--tick-interval-secs", type=float, default=30.0, help="reconcile tick period")
    flag("--poll-interval-secs", type=float, default=60.0, help="upstream poll period")
    flag("--sweep-interval-secs", type=float, default=30.0, help="rollback sweep period")
    flag("--max-body-bytes", type=int, default=1_048_576, help="largest accepted request body")
    flag(
        "--prime-timeout-secs",
        type=float,
        default=DEFAULT_PRIME_TIMEOUT_SECS,
        help="bound on the whole upstream prime before the port binds",
    )
    flag(
        "--tls-handshake-timeout-secs",
        type=float,
        default=DEFAULT_HANDSHAKE_TIMEOUT_SECS,
        help="drop a connection that has not finished the TLS handshake by then",
    )
    flag(
        "--keepalive-timeout-secs",
        type=float,
        default=DEFAULT_KEEPALIVE_TIMEOUT_SECS,
        help="close a connection idle this long (keep above the agents' 60 s poll)",
    )
    flag(
        "--body-read-timeout-secs",
        type=float,
        default=DEFAULT_BODY_READ_TIMEOUT_SECS,
        help="answer 408 and close when a request body takes longer to arrive",
    )
    flag(
        "--max-connections-per-peer",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS_PER_PEER,
        help="concurrent connections from one address; a site behind NAT needs one per "
        "agent (0 = no cap)",
    )
    flag(
        "--snapshot-cache",
        help="where the last verified upstream artifact is kept across restarts "
        "(default: verified-fleet.json beside --db-path; 'none' disables)",
    )
    flag(
        "--operator-journal",
        help="append-only file of operator revocations and spent token nonces, replayed "
        f"at start so the DR wipe keeps them (default: {JOURNAL_FILE} beside --db-path; "
        "'none' disables)",
    )
    flag("--strict", action="store_true", help="require the protocol header and all sidecars")


def _upstream(args: argparse.Namespace, kind: str) -> Upstream | None:
    attr = kind.replace("-", "_")
    url: str | None = getattr(args, f"{attr}_artifact_url")
    if not url:
        return None
    sig: str | None = getattr(args, f"{attr}_signature_url")
    return Upstream(
        artifact_url=url,
        signature_url=sig or url + ".sig",
        token_file=getattr(args, f"{attr}_token_file"),
    )


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BadInput(f"--listen: expected ADDRESS:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def beside_db(text: str | None, db_path: Path | None, name: str) -> Path | None:
    """A state file's path flag: as given, 'none' (disabled), or `name` beside the DB."""
    if text is not None:
        return None if text.strip().lower() in ("", "none") else Path(text)
    return db_path.parent / name if db_path is not None else None


def _secs(value: float, flag: str) -> float:
    if not 0 < value <= MAX_TIMEOUT_SECS:  # also refuses nan
        raise BadInput(f"{flag} must be > 0 and ≤ {MAX_TIMEOUT_SECS:g}, got {value:g}")
    return value


def config_from_args(args: argparse.Namespace) -> CpConfig:
    host, port = _listen(args.listen)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise BadInput("--tls-cert and --tls-key go together")
    if (args.fleet_ca_cert is None) != (args.fleet_ca_key is None):
        raise BadInput("--fleet-ca-cert and --fleet-ca-key go together")
    if (args.artifact is None) != (args.signature is None):
        raise BadInput("--artifact and --signature go together")
    if args.max_body_bytes < 1:
        raise BadInput("--max-body-bytes must be ≥ 1")
    if args.max_connections_per_peer < 0:
        raise BadInput("--max-connections-per-peer must be ≥ 0 (0 = no cap)")
    if args.confirm_deadline_secs < MIN_CONFIRM_WINDOW_SECS:
        raise BadInput(
            f"--confirm-deadline-secs must be ≥ {MIN_CONFIRM_WINDOW_SECS}, got "
            f"{args.confirm_deadline_secs} (agents switch inside the window and retry a "
            "failed confirm at least 3 times before their watchdog rolls back; a real "
            "switch may take 300 s, hence the default 360)"
        )
    low, high = SWITCH_TIMEOUT_BOUNDS
    if not low <= args.agent_switch_timeout_secs <= high:  # also refuses nan
        raise BadInput(
            f"--agent-switch-timeout-secs must be ≥ {low:g} and ≤ {high:g}, got "
            f"{args.agent_switch_timeout_secs:g}"
        )
    problem = confirm_window_problem(args.confirm_deadline_secs, args.agent_switch_timeout_secs)
    if problem is not None:
        raise BadInput(problem)
    if not MIN_HEALTH_FAILURE_SECS <= args.health_failure_secs <= MAX_TIMEOUT_SECS:
        raise BadInput(
            f"--health-failure-secs must be ≥ {MIN_HEALTH_FAILURE_SECS} and "
            f"≤ {MAX_TIMEOUT_SECS:g}, got {args.health_failure_secs}"
        )
    if args.agent_cert_validity_secs < 60:
        raise BadInput("--agent-cert-validity-secs must be ≥ 60")
    cfg = CpConfig(
        host=host,
        port=port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        client_ca=args.client_ca,
        trust_file=args.trust_file,
        db_path=args.db_path,
        agent_cn_suffix=args.agent_cn_suffix,
        artifact=args.artifact,
        signature=args.signature,
        channel_refs=_upstream(args, "channel-refs"),
        revocations=_upstream(args, "revocations"),
        bootstrap_nonces=_upstream(args, "bootstrap-nonces"),
        upstream_ca=args.upstream_ca,
        upstream_label=args.upstream_label,
        fleet_ca_cert=args.fleet_ca_cert,
        fleet_ca_key=args.fleet_ca_key,
        agent_cert_validity_secs=args.agent_cert_validity_secs,
        audit_log=args.audit_log,
        rollouts_dir=args.rollouts_dir,
        freshness_window_secs=args.freshness_window_secs,
        confirm_deadline_secs=args.confirm_deadline_secs,
        agent_switch_timeout_secs=args.agent_switch_timeout_secs,
        health_failure_secs=args.health_failure_secs,
        tick_interval_secs=args.tick_interval_secs,
        poll_interval_secs=args.poll_interval_secs,
        sweep_interval_secs=args.sweep_interval_secs,
        max_body_bytes=args.max_body_bytes,
        prime_timeout_secs=_secs(args.prime_timeout_secs, "--prime-timeout-secs"),
        body_read_timeout_secs=_secs(args.body_read_timeout_secs, "--body-read-timeout-secs"),
        limits=ConnectionLimits(
            handshake_timeout_secs=_secs(
                args.tls_handshake_timeout_secs, "--tls-handshake-timeout-secs"
            ),
            keepalive_timeout_secs=_secs(args.keepalive_timeout_secs, "--keepalive-timeout-secs"),
            max_connections_per_peer=args.max_connections_per_peer,
        ),
        snapshot_cache=beside_db(args.snapshot_cache, args.db_path, "verified-fleet.json"),
        operator_journal=beside_db(args.operator_journal, args.db_path, JOURNAL_FILE),
        strict=args.strict,
    )
    if cfg.strict and (
        cfg.client_ca is None or cfg.revocations is None or cfg.bootstrap_nonces is None
    ):
        raise BadInput(
            "--strict needs --client-ca, --revocations-artifact-url and "
            "--bootstrap-nonces-artifact-url"
        )
    return cfg
