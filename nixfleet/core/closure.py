"""Closure identity: the full store basename `<32-char hash>-<name>`.

The identity compared everywhere is the *full* basename. Cutting it at the first
`-` (the 32-char hash alone) never equals what the CP declares, so the CP dispatches
on every checkin: seed 000's "ghost loop".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NewType

from .errors import ParseError
from .idents import Grammar, preview

ClosureHash = NewType("ClosureHash", str)
"""The full store basename of a system closure, e.g. `abc…-nixos-system-h1-26.05`."""

STORE_DIR = "/nix/store"
NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"
MAX_NAME = 211
"""Nix's bound on a store path name (the part after `<hash>-`)."""
_BASENAME = re.compile(rf"([{NIX_BASE32}]{{32}})-([A-Za-z0-9+\-._?=]{{1,{MAX_NAME}}})")

CLOSURE_HASH = Grammar(
    f"a store basename (32 nix-base32 chars, '-', a name of at most {MAX_NAME} "
    "characters from A-Za-z0-9+-._?=)",
    lambda text: _BASENAME.fullmatch(text) is not None,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class StorePath:
    hash: str
    name: str

    @property
    def basename(self) -> ClosureHash:
        return ClosureHash(f"{self.hash}-{self.name}")

    @property
    def path(self) -> str:
        return f"{STORE_DIR}/{self.basename}"


def parse_store_path(text: str, *, source: str = "closure", field: str = "") -> StorePath:
    """Parse `/nix/store/<hash>-<name>[/…]` or a bare basename."""
    candidate = text
    prefix = STORE_DIR + "/"
    if candidate.startswith(prefix):
        candidate = candidate[len(prefix) :].split("/", 1)[0]
    elif "/" in candidate:
        raise ParseError(source, field, f"not a store path or basename: {preview(text)}")
    m = _BASENAME.fullmatch(candidate)
    if m is None:
        raise ParseError(
            source, field, f"not a store basename <32-char nix hash>-<name>: {preview(text)}"
        )
    return StorePath(hash=m.group(1), name=m.group(2))


def closure_hash_from_path(text: str) -> ClosureHash:
    """The identity of a store path: its full basename (never the bare hash)."""
    return parse_store_path(text).basename
