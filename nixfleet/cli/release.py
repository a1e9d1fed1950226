"""`nixfleet release sign ARTIFACT (--key KEYFILE | --tpm TCTI [--tpm-handle H]) [--out SIG]`.

Writes the raw 64-byte detached signature over the JCS bytes of ARTIFACT (default
ARTIFACT.sig). The algorithm comes from the key file: ed25519 or ECDSA P-256 (raw
`r‖s`, low-s). With `--tpm` the P-256 key persisted in the TPM signs (TPM2_Sign) and
its `r‖s` is written as the TPM made it: high-s about half the time, which verifiers
normalise (protocol §3.2). This is the local stand-in for CI's `nixfleet-release`
signing step.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from nixfleet.core.canonical import canonicalize
from nixfleet.core.signing import algorithm_of, sign

from . import app, tpmflags
from .cryptofiles import load_key_file, read_bytes, write_file

COMMAND = "release sign"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("release", help="release artifacts (sign)")
    sub = p.add_subparsers(metavar="ACTION", parser_class=app.OneLineParser)
    s = sub.add_parser(
        "sign",
        help="write the raw detached signature over an artifact's JCS bytes",
        description="Sign the JCS bytes of ARTIFACT; write the raw signature to SIG.",
    )
    s.add_argument("artifact", metavar="ARTIFACT", help="JSON artifact to sign")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--key", metavar="KEYFILE", help="ed25519 or P-256 key")
    tpmflags.add(s, group=which, tpm_help="sign with the P-256 key persisted in this TPM")
    s.add_argument("--out", metavar="SIG", help="signature file (default: ARTIFACT.sig)")
    s.set_defaults(func=run)
    p.set_defaults(func=lambda _args: _usage(p))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_usage(sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    raw = read_bytes(args.artifact, command=COMMAND, what="artifact")
    canonical = canonicalize(raw, source=f"{COMMAND}: {args.artifact}")
    out = args.out if args.out is not None else args.artifact + ".sig"
    if args.tpm is not None:
        with tpmflags.open_key(args, command=COMMAND, create=False) as tpm:
            signature, how = tpm.sign(canonical), f"{tpm.algorithm}, TPM {tpm.handle:#x}"
    else:
        key = load_key_file(args.key, command=COMMAND, what="signing key")
        signature, how = sign(key, canonical), algorithm_of(key)
    write_file(out, signature, command=COMMAND, what="signature")
    sys.stdout.write(f"signed {args.artifact} ({how}) -> {out}\n")
    return 0
