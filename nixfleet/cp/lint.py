"""`nixfleet-control-plane check-config`: the pre-deploy lint (seed 000 "CP service flaps
after deploy").

Takes the very flags `serve` takes and opens every file `serve` will open, the way it
opens them, without binding a port or touching the DB: the trust file, the TLS
material, the fleet CA, the build-time artifact, the forge token files, the upstream
CA, the rollouts dir and the directories the DB, journal and audit log live in. A
secret agenix could not decrypt (missing, or still the encrypted payload) is flagged
here in a second instead of as a restart loop after the deploy. One line per problem.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

from nixfleet.core.errors import NixfleetError

from . import issuance
from .config import CpConfig


def _read(path: Path, what: str) -> bytes | str:
    """The file's bytes, or the problem line naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        return f"cannot read {what} {path} ({exc.strerror})"


def _trust(cfg: CpConfig) -> Iterator[str]:
    from .main import load_trust  # main imports this module

    try:
        load_trust(cfg.trust_file)
    except NixfleetError as exc:
        yield f"trust file {cfg.trust_file}: {exc}"


def _readable(cfg: CpConfig) -> Iterator[tuple[Path, str]]:
    """Public files `serve` reads (secrets are `secret_problems`'s)."""
    named = [
        (cfg.tls_cert, "TLS cert"),
        (cfg.client_ca, "client CA"),
        (cfg.fleet_ca_cert, "fleet CA cert"),
        (cfg.artifact, "build-time artifact"),
        (cfg.signature, "build-time signature"),
        (cfg.upstream_ca, "upstream CA"),
    ]
    yield from ((path, what) for path, what in named if path is not None)


def _dirs(cfg: CpConfig) -> Iterator[str]:
    if cfg.rollouts_dir is not None and not cfg.rollouts_dir.is_dir():
        yield f"rollouts dir {cfg.rollouts_dir} is not a directory"
    for path, what in (
        (cfg.db_path, "state DB"),
        (cfg.operator_journal, "operator journal"),
        (cfg.audit_log, "audit log"),
        (cfg.snapshot_cache, "snapshot cache"),
    ):
        if path is not None and not path.parent.is_dir():
            yield f"{what} {path}: directory {path.parent} does not exist"


def config_problems(cfg: CpConfig) -> list[str]:
    out = list(_trust(cfg))
    for path, what in _readable(cfg):
        got = _read(path, what)
        if isinstance(got, str):
            out.append(got)
    return out + list(_dirs(cfg))


def _tls_key(cfg: CpConfig) -> Iterator[str]:
    if cfg.tls_key is None:
        return
    got = _read(cfg.tls_key, "TLS key")
    if isinstance(got, str):
        yield got
        return
    if cfg.tls_cert is None or not cfg.tls_cert.is_file():
        return  # the cert's own problem is reported with the public files
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            str(cfg.tls_cert), str(cfg.tls_key)
        )
    except (OSError, ssl.SSLError) as exc:
        yield f"TLS key {cfg.tls_key}: does not load with {cfg.tls_cert} ({exc})"


def _fleet_ca_key(cfg: CpConfig) -> Iterator[str]:
    if cfg.fleet_ca_key is None:
        return
    key = _read(cfg.fleet_ca_key, "fleet CA key")
    if isinstance(key, str):
        yield key
        return
    if cfg.fleet_ca_cert is None or not cfg.fleet_ca_cert.is_file():
        return
    try:
        issuance.load_fleet_ca(cfg.fleet_ca_cert.read_bytes(), key)
    except NixfleetError as exc:
        yield f"{exc} (files {cfg.fleet_ca_cert}, {cfg.fleet_ca_key})"


def secret_problems(cfg: CpConfig) -> list[str]:
    """The secrets agenix decrypts for the CP: TLS key, fleet CA key, forge tokens."""
    out = [*_tls_key(cfg), *_fleet_ca_key(cfg)]
    for upstream in (cfg.channel_refs, cfg.revocations, cfg.bootstrap_nonces):
        if upstream is not None and upstream.token_file is not None:
            got = _read(upstream.token_file, "forge token file")
            if isinstance(got, str):
                out.append(got)
    return out


def problems(cfg: CpConfig) -> list[str]:
    """Every problem `serve` would hit opening its files, one line each."""
    return config_problems(cfg) + secret_problems(cfg)
