"""`nixfleet mint-token`: sign a bootstrap token for one new host (seed 002 recipe).

    nixfleet mint-token --hostname newhost \\
        --csr-pubkey-fingerprint <SHA-256-base64-of-newhost-pubkey> \\
        --org-root-key /run/agenix/org-root-key > newhost-token.json

The token goes to stdout. stderr gets the nonce, the expiry and the
`bootstrapNonces` entry to add to fleet.nix: a CP with a nonce allowlist refuses
the token until the signed `bootstrap-nonces.json` lists it (protocol §7.4).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nixfleet.core.canonical import load_json
from nixfleet.core.errors import BadInput
from nixfleet.core.hostkey import parse_public_line
from nixfleet.core.jsonfields import Reader
from nixfleet.core.signing import algorithm_of
from nixfleet.core.token import NONCE_BYTES, dump_token, mint_token, nonce_allowlist_entry

from .cryptofiles import load_key_file, now_from, read_bytes

COMMAND = "mint-token"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        COMMAND,
        help="sign a bootstrap token for a new host",
        description=(
            "Sign a bootstrap token with the org root key. The token JSON goes to stdout; "
            "the nonce, its expiry and the bootstrapNonces allowlist entry go to stderr."
        ),
    )
    p.add_argument("--hostname", required=True, help="bare hostname of the new host")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--csr-pubkey-fingerprint",
        metavar="FP",
        help="base64 sha256 of the host's raw ed25519 key (44 chars; SHA256:… also accepted)",
    )
    src.add_argument(
        "--fleet-resolved",
        metavar="FILE",
        help="derive the fingerprint from hosts.<hostname>.pubkey in fleet.resolved.json",
    )
    p.add_argument(
        "--org-root-key",
        required=True,
        metavar="FILE",
        help="ed25519 org root private key: raw 32 bytes, hex, or PKCS#8 PEM",
    )
    p.add_argument("--validity-hours", type=_positive_hours, default=24, metavar="H")
    p.add_argument("--version", type=int, choices=[1], default=1, help="token format (only 1)")
    p.add_argument("--now", metavar="RFC3339", help=argparse.SUPPRESS)  # tests and replays
    p.set_defaults(func=run)


def _positive_hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not hours > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return hours


def _fingerprint_from_fleet(path: str, hostname: str) -> str:
    value = load_json(read_bytes(path, command=COMMAND, what="fleet"), source=path)
    host = Reader.root(value, path).sub("hosts").sub(hostname)
    pubkey = host.opt_str("pubkey")
    if pubkey is None:
        raise BadInput(f"{COMMAND}: {path}: {host.field('pubkey')}: no host key declared")
    return parse_public_line(pubkey, source=f"{path}: {host.field('pubkey')}").fingerprint


def run(args: argparse.Namespace) -> int:
    fingerprint = (
        args.csr_pubkey_fingerprint
        if args.csr_pubkey_fingerprint is not None
        else _fingerprint_from_fleet(args.fleet_resolved, args.hostname)
    )
    key = load_key_file(args.org_root_key, command=COMMAND, what="org root key")
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInput(
            f"{COMMAND}: org root key {args.org_root_key} is {algorithm_of(key)}; "
            "orgRootKey must be ed25519"
        )
    token = mint_token(
        hostname=args.hostname,
        expected_pubkey_fingerprint=fingerprint,
        org_root_key=key,
        now=now_from(args.now),
        nonce_bytes=os.urandom(NONCE_BYTES),
        validity=timedelta(hours=args.validity_hours),
    )
    sys.stdout.write(json.dumps(dump_token(token), indent=2) + "\n")
    entry = json.dumps(nonce_allowlist_entry(token), separators=(",", ":"))
    sys.stderr.write(
        f"nonce: {token.claims.nonce}\n"
        f"expiresAt: {token.claims.expires_at}\n"
        "add to bootstrapNonces in fleet.nix (the signed bootstrap-nonces.json allowlist):\n"
        f"{entry}\n"
    )
    return 0
