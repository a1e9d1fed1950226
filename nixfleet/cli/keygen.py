"""`nixfleet keygen --algorithm ed25519|ecdsa-p256 --out PATH [--force]`.

Writes PATH, the private key as unencrypted PKCS#8 PEM with mode 0600, and PATH.pub,
the trust.json key object `{"algorithm", "public"}`. Existing files are never
overwritten without `--force`. The key object is also printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from nixfleet.core.errors import BadInput
from nixfleet.core.signing import (
    ALGORITHMS,
    private_key_from_seed,
    private_key_pem,
    public_key_json,
    seed_len,
)

from .cryptofiles import write_file

COMMAND = "keygen"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        COMMAND,
        help="generate a signing key (PKCS#8 PEM) and its trust.json key object",
        description=(
            "Generate a private key at PATH (PKCS#8 PEM, mode 0600) and PATH.pub holding "
            'the trust.json key object {"algorithm", "public"}.'
        ),
    )
    p.add_argument("--algorithm", required=True, choices=ALGORITHMS)
    p.add_argument("--out", required=True, metavar="PATH", help="private key file to create")
    p.add_argument("--force", action="store_true", help="overwrite PATH and PATH.pub")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out: str = args.out
    pub_path = out + ".pub"
    if not args.force:
        # Check both first, so a refusal leaves no half-written pair behind.
        for path in (out, pub_path):
            if os.path.lexists(path):
                raise BadInput(f"{COMMAND}: {path} exists (use --force to overwrite)")
    key = private_key_from_seed(args.algorithm, os.urandom(seed_len(args.algorithm)))
    entry = json.dumps(public_key_json(key))
    write_file(
        out, private_key_pem(key), command=COMMAND, what="private key", mode=0o600,
        force=args.force,
    )
    write_file(pub_path, (entry + "\n").encode(), command=COMMAND, what="public key",
               force=args.force)
    sys.stdout.write(entry + "\n")
    sys.stderr.write(f"wrote {out} ({args.algorithm} private key, 0600) and {pub_path}\n")
    return 0
