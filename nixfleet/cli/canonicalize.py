"""`nixfleet canonicalize [FILE]`: JSON in, RFC 8785 (JCS) bytes out.

Reads stdin (or FILE), writes the canonical bytes with no trailing newline, so the
output is exactly what signatures and content ids cover. Exit 1 on bad JSON, 2 on I/O.
"""

from __future__ import annotations

import argparse
from typing import Any

from nixfleet.core.canonical import canonicalize
from nixfleet.core.errors import NixfleetError, ParseError

from .cryptofiles import read_bytes, write_stdout

COMMAND = "canonicalize"


class BadJson(NixfleetError):
    """The input is not canonicalizable JSON: a content problem, exit 1 (not 2)."""

    exit_code = 1


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        COMMAND,
        help="print the JCS (RFC 8785) form of JSON on stdin",
        description="Read JSON from stdin (or FILE) and write its RFC 8785 canonical bytes.",
    )
    p.add_argument("file", nargs="?", default="-", metavar="FILE", help="input (default: stdin)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raw = read_bytes(args.file, command=COMMAND, what="input")
    source = "stdin" if args.file == "-" else args.file
    try:
        canonical = canonicalize(raw, source=f"{COMMAND}: {source}")
    except ParseError as exc:
        raise BadJson(str(exc)) from exc
    write_stdout(canonical)
    return 0
