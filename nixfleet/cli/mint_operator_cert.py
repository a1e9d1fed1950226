"""`nixfleet mint-operator-cert`: an operator's mTLS client certificate (protocol §3.4).

    nixfleet mint-operator-cert --root-cert ca.pem --root-key ca.key --user alice \\
        --output-cert alice.pem --output-key alice-key.pem

Signs with the fleet CA a new P-256 key (written 0600) and a certificate with CN
`operator-<user>@<host>` (`--host` defaults to this machine's name; `--cn` gives the
whole CN instead). The CP lets only such certificates read fleet-wide routes
(`/v1/hosts`, `/v1/rollouts`, `/metrics`, `/v1/channels/…`), and never lets them
speak for a host. Existing files are never overwritten without `--force`.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from cryptography.hazmat.primitives import serialization

from nixfleet.core.errors import BadInput
from nixfleet.cp.issuance import (
    OPERATOR_DAYS,
    issue_operator_cert,
    load_fleet_ca,
    operator_cn,
)

from .cryptofiles import now_from, read_bytes, write_file

COMMAND = "mint-operator-cert"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        COMMAND,
        help="sign an operator's mTLS client certificate with the fleet CA",
        description=(
            "Write a new P-256 key (mode 0600) and a client certificate with CN "
            "operator-<user>@<host>, signed by the fleet CA."
        ),
    )
    p.add_argument("--root-cert", required=True, metavar="FILE", help="fleet CA certificate")
    p.add_argument("--root-key", required=True, metavar="FILE", help="fleet CA private key")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="operator user name: CN operator-<user>@<host>")
    who.add_argument("--cn", help="the whole CN, operator-<user>@<host>")
    p.add_argument("--host", help="the <host> of the CN (default: this machine's host name)")
    p.add_argument("--output-cert", required=True, metavar="FILE")
    p.add_argument("--output-key", required=True, metavar="FILE")
    p.add_argument("--days", type=int, default=OPERATOR_DAYS, help="validity (default 365)")
    p.add_argument("--force", action="store_true", help="overwrite the output files")
    p.add_argument("--now", metavar="RFC3339", help=argparse.SUPPRESS)  # tests and replays
    p.set_defaults(func=run)


def _cn(args: argparse.Namespace) -> str:
    if args.cn is None:
        return operator_cn(args.user, args.host or socket.gethostname())
    if args.host is not None:
        raise BadInput(f"{COMMAND}: --host goes with --user, not with --cn")
    return str(args.cn)  # issue_operator_cert checks its grammar


def run(args: argparse.Namespace) -> int:
    cn = _cn(args)
    if not args.force:
        # Check both first, so a refusal leaves no half-written pair behind.
        for path in (args.output_cert, args.output_key):
            if os.path.lexists(path):
                raise BadInput(f"{COMMAND}: {path} exists (use --force to overwrite)")
    ca = load_fleet_ca(
        read_bytes(args.root_cert, command=COMMAND, what="fleet CA certificate"),
        read_bytes(args.root_key, command=COMMAND, what="fleet CA key"),
    )
    cert, key = issue_operator_cert(ca, cn, now_from(args.now), days=args.days)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_file(args.output_key, key_pem, command=COMMAND, what="key", mode=0o600, force=args.force)
    write_file(
        args.output_cert,
        cert.public_bytes(serialization.Encoding.PEM),
        command=COMMAND,
        what="certificate",
        force=args.force,
    )
    sys.stderr.write(
        f"wrote {args.output_cert} (CN {cn}, until {cert.not_valid_after_utc:%Y-%m-%d}) "
        f"and {args.output_key} (P-256 key, 0600)\n"
    )
    return 0
