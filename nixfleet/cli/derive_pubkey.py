"""`nixfleet derive-pubkey FILE`: the base64 public key of a private key file.

Accepts what `mint-token --org-root-key` accepts (raw 32-byte seed, hex, PKCS#8 PEM)
plus OpenSSH private keys. Prints the trust.json `public` value; `--json` prints the
whole key object `{"algorithm", "public"}` instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nixfleet.core.signing import public_key_json

from .cryptofiles import load_key_file

COMMAND = "derive-pubkey"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        COMMAND,
        help="print the base64 public key of a private key file",
        description="Print the base64 public key (trust.json form) of a private key file.",
    )
    p.add_argument("file", metavar="FILE", help="private key: raw, hex, PKCS#8 PEM or OpenSSH")
    p.add_argument("--json", action="store_true", help='print {"algorithm", "public"}')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    entry = public_key_json(load_key_file(args.file, command=COMMAND, what="private key"))
    sys.stdout.write((json.dumps(entry) if args.json else entry["public"]) + "\n")
    return 0
