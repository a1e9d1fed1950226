"""`nixfleet keygen --algorithm ed25519|ecdsa-p256 --out PATH [--force]`
and `nixfleet keygen --tpm TCTI [--tpm-handle H] [--out PATH] [--force]`.

Writes PATH, the private key as unencrypted PKCS#8 PEM with mode 0600, and PATH.pub,
the trust.json key object `{"algorithm", "public"}`. Existing files are never
overwritten without `--force`. The key object is also printed on stdout.

With `--tpm` the P-256 key is created in the TPM and made persistent at the handle
(or, when one is there already, loaded: the command is idempotent); the private key
never leaves the TPM, so only PATH.pub is written (with `--out`).
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
    ECDSA_P256,
    private_key_from_seed,
    private_key_pem,
    public_key_json,
    seed_len,
)

from . import tpmflags
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
    p.add_argument("--algorithm", choices=ALGORITHMS, help="required without --tpm")
    p.add_argument(
        "--out", metavar="PATH", help="private key file to create (required without --tpm)"
    )
    p.add_argument("--force", action="store_true", help="overwrite PATH and PATH.pub")
    tpmflags.add(p, tpm_help="create (or load) a persistent P-256 key in this TPM instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.tpm is not None:
        return run_tpm(args)
    missing = [flag for flag, v in (("--algorithm", args.algorithm), ("--out", args.out)) if not v]
    if missing:
        raise BadInput(f"{COMMAND}: {' and '.join(missing)} required (or --tpm TCTI)")
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


def run_tpm(args: argparse.Namespace) -> int:
    if args.algorithm not in (None, ECDSA_P256):
        raise BadInput(f"{COMMAND}: --tpm keys are {ECDSA_P256}, not {args.algorithm}")
    pub_path = args.out + ".pub" if args.out else None
    if pub_path and not args.force and os.path.lexists(pub_path):
        raise BadInput(f"{COMMAND}: {pub_path} exists (use --force to overwrite)")
    with tpmflags.open_key(args, command=COMMAND, create=True) as tpm:
        entry = json.dumps(tpm.public_key_json())
        made = "created" if tpm.created else "loaded"
        where = f"{made} {ECDSA_P256} key at TPM handle {tpm.handle:#x} ({tpm.identity().line()})"
    if pub_path:
        write_file(pub_path, (entry + "\n").encode(), command=COMMAND, what="public key",
                   force=args.force)
        where += f"; wrote {pub_path}"
    sys.stdout.write(entry + "\n")
    sys.stderr.write(where + "\n")
    return 0
