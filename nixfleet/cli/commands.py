"""The registry of `nixfleet` subcommand modules, in `--help` order."""

from __future__ import annotations

from types import ModuleType

from . import (
    canonicalize,
    derive_pubkey,
    fingerprint,
    keygen,
    mint_token,
    reconcile_cmd,
    release,
    verify_artifact,
)

ALL: list[ModuleType] = [
    mint_token,
    derive_pubkey,
    fingerprint,
    keygen,
    canonicalize,
    release,
    verify_artifact,
    reconcile_cmd,
]
