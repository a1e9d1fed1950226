"""File IO shared by the crypto subcommands; every failure is one line naming the path."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

from nixfleet.core.errors import BadInput
from nixfleet.core.signing import PrivateKey, load_private_key
from nixfleet.core.timeutil import parse_instant


def read_bytes(path: str, *, command: str, what: str) -> bytes:
    """The whole file; `-` is stdin."""
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise BadInput(f"{command}: cannot read {what} {path} ({exc.strerror or exc})") from exc


def load_key_file(path: str, *, command: str, what: str) -> PrivateKey:
    data = read_bytes(path, command=command, what=what)
    return load_private_key(data, source=f"{command}: {what} {path}")


def write_file(
    path: str, data: bytes, *, command: str, what: str, mode: int = 0o644, force: bool = True
) -> None:
    """Write `data` to `path` with exactly `mode`; refuse an existing file unless `force`."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, mode)  # an overwritten file keeps its old mode otherwise
            f.write(data)
    except FileExistsError as exc:
        raise BadInput(f"{command}: {what} {path} exists (use --force to overwrite)") from exc
    except OSError as exc:
        raise BadInput(f"{command}: cannot write {what} {path} ({exc.strerror or exc})") from exc


def write_stdout(data: bytes) -> None:
    """Raw bytes on stdout, after any text already written there."""
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def now_from(text: str | None, *, flag: str = "--now") -> datetime:
    """`--now` if given (RFC 3339), else the clock: shells own the clock, cores never."""
    return parse_instant(text, source=flag) if text is not None else datetime.now(UTC)
