"""`nixfleet-control-plane serve`: open the DB, prime, then listen.

Everything that can refuse start-up (flags, trust file, migrations, the operator journal,
the fleet CA) is checked before the port binds, and refuses with one line and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.sslproto
import gc
import logging
import signal
import sqlite3
import ssl
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web

from nixfleet.cli.app import OneLineParser, run
from nixfleet.core.canonical import load_json
from nixfleet.core.errors import BadInput, NixfleetError
from nixfleet.core.trust import Trust, parse_trust
from nixfleet.logsetup import configure_logging

from . import issuance, lint
from .config import CpConfig, add_serve_flags, config_from_args
from .http import build_app
from .journal import OperatorJournal
from .listener import CpSite
from .migrate import WIPE_HINT, MigrationError
from .rollouts import RolloutsDir
from .runtime import CpRuntime
from .service import CpService, ServiceSettings
from .store import Store

log = logging.getLogger("nixfleet.cp")


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read {what} {path} ({exc.strerror})") from exc


def load_trust(path: Path) -> Trust:
    return parse_trust(load_json(read_file(path, "trust file"), source=str(path)), source=str(path))


def server_ssl_context(cfg: CpConfig) -> ssl.SSLContext | None:
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
        if cfg.client_ca is not None:
            ctx.load_verify_locations(cafile=str(cfg.client_ca))
            # Optional at the handshake: /v1/enroll comes without a certificate.
            ctx.verify_mode = ssl.CERT_OPTIONAL
    except (OSError, ssl.SSLError) as exc:
        raise BadInput(f"cannot load TLS material {cfg.tls_cert}, {cfg.tls_key} ({exc})") from exc
    return ctx


def open_store(path: Path) -> Store:
    try:
        return Store.open(path)
    except sqlite3.Error as exc:  # e.g. a full disk: the migrations cannot be written
        raise BadInput(f"cannot open state DB {path} ({exc})") from exc


def open_journal(cfg: CpConfig, store: Store | None) -> OperatorJournal | None:
    """Replay the operator journal into the DB (the wipe must not readmit anyone)."""
    if store is None:
        return None
    if cfg.operator_journal is None:
        log.warning(
            "operator journal disabled (--operator-journal none): the DR wipe forgets "
            "operator revocations and spent bootstrap tokens"
        )
        return None
    try:
        return OperatorJournal.open(cfg.operator_journal, store, now=datetime.now(UTC))
    except sqlite3.Error as exc:
        raise BadInput(f"cannot replay the operator journal into {store.path} ({exc})") from exc


def build_service(cfg: CpConfig) -> CpService:
    load_trust(cfg.trust_file)  # refuse to start on an unreadable or invalid trust file
    store = open_store(cfg.db_path) if cfg.db_path is not None else None
    journal = open_journal(cfg, store)
    fleet_ca = None
    if cfg.fleet_ca_cert is not None and cfg.fleet_ca_key is not None:
        cert = read_file(cfg.fleet_ca_cert, "fleet CA cert")
        key = read_file(cfg.fleet_ca_key, "fleet CA key")
        try:
            fleet_ca = issuance.load_fleet_ca(cert, key)
        except BadInput as exc:  # e.g. a secret still encrypted: name the files
            raise BadInput(f"{exc} (files {cfg.fleet_ca_cert}, {cfg.fleet_ca_key})") from exc
    audit_path = cfg.audit_log

    def audit(line: str) -> None:
        if audit_path is not None:
            with audit_path.open("a") as fh:
                fh.write(line)

    settings = ServiceSettings(
        agent_cn_suffix=cfg.agent_cn_suffix,
        confirm_window=timedelta(seconds=cfg.confirm_deadline_secs),
        health_failure=timedelta(seconds=cfg.health_failure_secs),
        freshness_window_secs=cfg.freshness_window_secs,
        agent_cert_validity_secs=cfg.agent_cert_validity_secs,
        needs_revocations=cfg.revocations is not None,
        needs_nonces=cfg.bootstrap_nonces is not None,
    )
    return CpService(
        store,
        lambda: load_trust(cfg.trust_file),
        settings,
        fleet_ca=fleet_ca,
        audit=audit,
        manifest_source=RolloutsDir(cfg.rollouts_dir) if cfg.rollouts_dir else None,
        journal=journal,
    )


def tune_for_many_connections() -> None:
    """A CP holds one keep-alive TLS connection per agent (10,000 in a large fleet).

    - asyncio gives every TLS connection a 256 KiB read buffer; agent requests are a few
      KiB, so 32 KiB cuts ~3 GB of RSS at 10,000 connections to a fraction of it.
    - Each connection adds tracked objects that never become garbage; full collections
      over them paused the event loop for 250–800 ms (benchmarks/cp_load.py). Freeze
      what exists after the prime and collect the youngest generation less often.
    """
    asyncio.sslproto.SSLProtocol.max_size = 32 * 1024
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def serve(cfg: CpConfig) -> int:
    service = build_service(cfg)
    if service.store is not None:
        log.info("sqlite opened + migrated path=%s", cfg.db_path)
    if service.fleet_ca is None:
        log.warning("no fleet CA configured: /v1/enroll and /v1/agent/renew answer 500")
    ctx = server_ssl_context(cfg)
    runtime = CpRuntime(cfg, service)
    await runtime.start()
    tune_for_many_connections()
    app = build_app(
        service,
        strict=cfg.strict,
        max_body_bytes=cfg.max_body_bytes,
        body_read_timeout=cfg.body_read_timeout_secs,
    )
    runner = web.AppRunner(app, shutdown_timeout=25)
    await runner.setup()
    site = CpSite(runner, cfg.host, cfg.port, ssl_context=ctx, limits=cfg.limits)
    try:
        await site.start()
    except OSError as exc:
        await runtime.stop()
        await runner.cleanup()
        raise BadInput(f"cannot listen on {cfg.host}:{cfg.port} ({exc.strerror})") from exc
    mode = "TLS+mTLS" if ctx is not None and cfg.client_ca else ("TLS-only" if ctx else "plain")
    log.info(
        "control plane listening addr=%s:%d mode=%s ready=%s",
        cfg.host,
        cfg.port,
        mode,
        service.ready,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("control plane stopping")
    await runtime.stop()
    await runner.cleanup()
    if service.store is not None:
        service.store.close()
    return 0


def _serve(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    configure_logging()
    try:
        return asyncio.run(serve(cfg))
    except MigrationError as exc:
        # First line exactly refinery's message (seed 000 greps it), then the way out.
        hint = exc.hint
        if hint == WIPE_HINT and cfg.db_path is not None:
            db = cfg.db_path
            hint = (
                "hint: this DB was made by another CP version; wipe it (disaster-recovery "
                "runbook, step 2; the DB is not load-bearing): stop the service, "
                f"rm -f {db} {db}-wal {db}-shm, start it again"
            )
        raise BadInput(f"{exc}\n{hint}" if hint else str(exc)) from exc
    except NixfleetError as exc:
        hint = getattr(exc, "hint", None)
        raise BadInput(f"{exc}\n{hint}" if hint else str(exc)) from exc


def _check_config(args: argparse.Namespace) -> int:
    """The pre-deploy lint: one line per problem on stderr, exit 1 if any."""
    found = lint.problems(config_from_args(args))
    for line in found:
        sys.stderr.write(f"check-config: {line}\n")
    if found:
        return 1
    print("check-config: ok")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="nixfleet-control-plane", description="NixFleet control plane")
    sub = parser.add_subparsers(metavar="COMMAND", parser_class=OneLineParser)
    serve_p = sub.add_parser("serve", help="run the control plane")
    add_serve_flags(serve_p)
    serve_p.set_defaults(func=_serve)
    check_p = sub.add_parser(
        "check-config", help="open every file `serve` would, with the same flags; no port"
    )
    add_serve_flags(check_p)
    check_p.set_defaults(func=_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv, name="nixfleet-control-plane")


if __name__ == "__main__":
    raise SystemExit(main())
