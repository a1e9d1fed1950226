"""`nixfleet release sign ARTIFACT --key KEYFILE [--out SIG]`.

Writes the raw 64-byte detached signature over the JCS bytes of ARTIFACT (default
ARTIFACT.sig). The algorithm comes from the key file: ed25519 or ECDSA P-256 (raw
`r‖s`, low-s). This is the local stand-in for CI's `nixfleet-release` signing step.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from nixfleet.core.canonical import canonicalize
from nixfleet.core.signing import algorithm_of, sign

from . import app
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
    s.add_argument("--key", required=True, metavar="KEYFILE", help="ed25519 or P-256 key")
    s.add_argument("--out", metavar="SIG", help="signature file (default: ARTIFACT.sig)")
    s.set_defaults(func=run)
    p.set_defaults(func=lambda _args: _usage(p))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_usage(sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    raw = read_bytes(args.artifact, command=COMMAND, what="artifact")
    canonical = canonicalize(raw, source=f"{COMMAND}: {args.artifact}")
    key = load_key_file(args.key, command=COMMAND, what="signing key")
    out = args.out if args.out is not None else args.artifact + ".sig"
    write_file(out, sign(key, canonical), command=COMMAND, what="signature")
    sys.stdout.write(f"signed {args.artifact} ({algorithm_of(key)}) -> {out}\n")
    return 0
