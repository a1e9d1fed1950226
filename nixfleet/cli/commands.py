"""The registry of `nixfleet` subcommand modules."""

from __future__ import annotations

ALL: list = []  # type: ignore[type-arg]

from . import reconcile_cmd  # noqa: E402

ALL.append(reconcile_cmd)

from . import (  # noqa: E402
    canonicalize,
    derive_pubkey,
    fingerprint,
    keygen,
    mint_token,
    release,
    verify_artifact,
)

ALL.extend([mint_token, derive_pubkey, canonicalize, keygen, fingerprint, release, verify_artifact])
