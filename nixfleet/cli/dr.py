"""`nixfleet dr preflight [CP serve flags…] --operator-cert C --operator-key K`: seed 001's
pre-flight as a gate, run on the CP host before the wipe.

It takes the control plane's own `serve` flags (and `NIXFLEET_CP_*` variables), so it
checks exactly what the restarted CP will use, and refuses (exit 1, one line naming
the prerequisite) unless all hold:

  1. the signed artifacts are reachable and verify: `--channel-refs-artifact-url`
     (+ .sig) and, if configured, `--revocations-artifact-url` (+ .sig);
  2. the build-time fallback is intact: `--artifact` and `--signature` verify with
     the CI release key of `--trust-file`;
  3. the fleet CA is there (`--fleet-ca-cert`, `--fleet-ca-key`): only a warning when
     not, as existing agents keep working without it (enroll and renew do not);
  4. at least one agent is online (checked in within 3 polls), asked of the running
     CP's `/v1/hosts` with the operator's certificate.

It reads files and asks over HTTPS only: the state DB and everything under
/etc/nixfleet/cp are left exactly as they are. All green: exit 0, "proceed".
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nixfleet.core.errors import BadInput, NixfleetError
from nixfleet.core.protocol import HOSTS
from nixfleet.core.timeutil import parse_instant
from nixfleet.core.trust import Trust
from nixfleet.core.verify import verify_artifact
from nixfleet.cp import issuance
from nixfleet.cp.config import CpConfig, Upstream, add_serve_flags, config_from_args
from nixfleet.cp.main import load_trust, read_file
from nixfleet.cp.runtime import upstream_ssl_context

COMMAND = "dr"
FETCH_TIMEOUT_SECS = 15.0
ONLINE_POLLS = 3
"""Online: a checkin within 3 poll intervals (decisions: open questions)."""


class PrerequisiteFailed(NixfleetError):
    """One of seed 001's pre-flight prerequisites does not hold: do not wipe."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class Prerequisite:
    number: int
    name: str
    check: Callable[[], str]
    """Returns what it found; raises NixfleetError saying what is wrong."""


def register(subparsers: Any) -> None:
    dr = subparsers.add_parser(COMMAND, help="disaster recovery (seed 001)")
    sub = dr.add_subparsers(metavar="STEP", parser_class=type(dr))
    p = sub.add_parser(
        "preflight",
        help="refuse unless seed 001's pre-flight prerequisites hold (run before the wipe)",
        description="Give it the CP's own serve flags; it reads and fetches, changes nothing.",
    )
    add_serve_flags(p)
    p.add_argument("--operator-cert", type=Path, required=True, help="operator client cert")
    p.add_argument("--operator-key", type=Path, required=True, help="operator client key")
    p.add_argument("--cp-url", help="the running CP (default: https://localhost:<--listen port>)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    cp_url = args.cp_url or f"https://localhost:{cfg.port}"
    try:
        trust = load_trust(cfg.trust_file)
    except NixfleetError as exc:
        raise _failed(2, "build-time fallback intact", exc) from exc
    prerequisites = [
        Prerequisite(1, "signed artifacts reachable", lambda: _upstreams(cfg, trust)),
        Prerequisite(2, "build-time fallback intact", lambda: _build_time(cfg, trust)),
        Prerequisite(4, "an agent online", lambda: _online(cfg, args, cp_url)),
    ]
    found = []
    for pre in prerequisites:
        try:
            found.append(pre.check())
        except NixfleetError as exc:
            raise _failed(pre.number, pre.name, exc) from exc
    warning = _fleet_ca(cfg)
    if warning:
        sys.stderr.write(f"nixfleet: dr preflight: warning: {warning}\n")
    print(f"dr preflight: proceed ({'; '.join(found)})")
    return 0


def _failed(number: int, name: str, exc: NixfleetError) -> PrerequisiteFailed:
    return PrerequisiteFailed(
        f"dr preflight: prerequisite {number} ({name}) fails: {exc}; do not wipe the DB"
    )


def _verify(raw: bytes, sig: bytes, trust: Trust, cfg: CpConfig, source: str) -> str:
    verified = verify_artifact(
        raw,
        sig,
        trust.ci_release_key,
        now=datetime.now(UTC),
        window_secs=cfg.freshness_window_secs,
        source=source,
    )
    return verified.signed_at_text


def _fetch(url: str, cfg: CpConfig, up: Upstream) -> bytes:
    req = urllib.request.Request(url)
    if up.token_file is not None:
        token = read_file(up.token_file, "token file").decode().strip()
        req.add_header("Authorization", f"Bearer {token}")
    ctx = upstream_ssl_context(cfg.upstream_ca)
    try:
        with urllib.request.urlopen(req, timeout=FETCH_TIMEOUT_SECS, context=ctx) as resp:
            data: bytes = resp.read()
            return data
    except urllib.error.HTTPError as exc:
        raise BadInput(f"GET {url}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BadInput(f"GET {url}: {reason}") from exc


def _upstreams(cfg: CpConfig, trust: Trust) -> str:
    if cfg.channel_refs is None:
        raise BadInput("no --channel-refs-artifact-url: the CP would have nothing to prime")
    said = []
    for what, up in (("fleet.resolved.json", cfg.channel_refs), ("revocations", cfg.revocations)):
        if up is None:
            continue
        raw = _fetch(up.artifact_url, cfg, up)
        sig = _fetch(up.signature_url, cfg, up)
        said.append(f"{what} signed_at={_verify(raw, sig, trust, cfg, up.artifact_url)}")
    return ", ".join(said)


def _build_time(cfg: CpConfig, trust: Trust) -> str:
    if cfg.artifact is None or cfg.signature is None:
        raise BadInput("no --artifact/--signature: no build-time fallback")
    raw = read_file(cfg.artifact, "build-time artifact")
    sig = read_file(cfg.signature, "build-time signature")
    return f"build-time signed_at={_verify(raw, sig, trust, cfg, str(cfg.artifact))}"


def _fleet_ca(cfg: CpConfig) -> str | None:
    """Why enroll and renew would fail after the wipe (None: the CA is there)."""
    if cfg.fleet_ca_cert is None or cfg.fleet_ca_key is None:
        return "no --fleet-ca-cert/--fleet-ca-key: /v1/enroll and /v1/agent/renew will fail"
    try:
        issuance.load_fleet_ca(
            read_file(cfg.fleet_ca_cert, "fleet CA cert"),
            read_file(cfg.fleet_ca_key, "fleet CA key"),
        )
    except NixfleetError as exc:
        return f"fleet CA unusable ({exc}): /v1/enroll and /v1/agent/renew will fail"
    return None


def _online(cfg: CpConfig, args: argparse.Namespace, cp_url: str) -> str:
    ctx = ssl.create_default_context(cafile=str(cfg.client_ca) if cfg.client_ca else None)
    try:
        ctx.load_cert_chain(str(args.operator_cert), str(args.operator_key))
    except (OSError, ssl.SSLError) as exc:
        raise BadInput(f"cannot load the operator certificate ({exc})") from exc
    ctx.check_hostname = False  # localhost; the chain is still verified
    url = cp_url.rstrip("/") + HOSTS
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_SECS, context=ctx) as resp:
            hosts = json.loads(resp.read())["hosts"]
    except urllib.error.HTTPError as exc:
        why = f"GET {url}: HTTP {exc.code}"
        raise BadInput(f"cannot ask the CP which agents are online: {why}") from exc
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"cannot ask the CP which agents are online: GET {url}: {exc}") from exc
    since = datetime.now(UTC) - timedelta(seconds=ONLINE_POLLS * cfg.poll_interval_secs)
    online = [
        h["hostname"]
        for h in hosts
        if h.get("lastCheckinAt") and parse_instant(h["lastCheckinAt"]) >= since
    ]
    if not online:
        raise BadInput(f"none of {len(hosts)} hosts checked in within {ONLINE_POLLS} polls")
    return f"{len(online)}/{len(hosts)} agents online"
