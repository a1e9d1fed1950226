"""The registry of `nixfleet` subcommand modules, in `--help` order."""

from __future__ import annotations

from types import ModuleType

from . import (
    canonicalize,
    db,
    derive_pubkey,
    diagnose,
    dr,
    fingerprint,
    keygen,
    mint_operator_cert,
    mint_token,
    reconcile_cmd,
    release,
    revoke,
    verify_artifact,
)

ALL: list[ModuleType] = [
    mint_token,
    mint_operator_cert,
    revoke,
    diagnose,
    db,
    dr,
    derive_pubkey,
    fingerprint,
    keygen,
    canonicalize,
    release,
    verify_artifact,
    reconcile_cmd,
]
