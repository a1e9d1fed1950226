"""`nixfleet fingerprint [FILE] [--pubkey LINE]`: a host key's enrollment fingerprint.

Prints base64(sha256(raw ed25519 key)), padded, 44 characters: the value
`mint-token --csr-pubkey-fingerprint` wants (not OpenSSH's `SHA256:` form). FILE may
hold an OpenSSH public line (`ssh_host_ed25519_key.pub`) or the private key itself.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from nixfleet.core.errors import BadInput
from nixfleet.core.hostkey import host_public_key_from, parse_public_line

from .cryptofiles import read_bytes

COMMAND = "fingerprint"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        COMMAND,
        help="print the enrollment fingerprint of an ed25519 host key",
        description=(
            "Print base64(sha256(raw ed25519 host key)), the fingerprint mint-token's "
            "--csr-pubkey-fingerprint takes."
        ),
    )
    p.add_argument(
        "file", nargs="?", metavar="FILE", help="OpenSSH public key line or private key file"
    )
    p.add_argument("--pubkey", metavar="LINE", help="an OpenSSH public line given inline")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.pubkey is None):
        raise BadInput(f"{COMMAND}: give exactly one of FILE or --pubkey")
    if args.pubkey is not None:
        key = parse_public_line(args.pubkey, source=f"{COMMAND}: --pubkey")
    else:
        data = read_bytes(args.file, command=COMMAND, what="host key")
        key = host_public_key_from(data, source=f"{COMMAND}: {args.file}")
    sys.stdout.write(key.fingerprint + "\n")
    return 0
