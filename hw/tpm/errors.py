"""The one error a TPM path raises: one line, printed by the CLI shell and the harness."""

from __future__ import annotations

from nixfleet.core.errors import Unreachable


class TpmError(Unreachable):
    """No usable TPM: a missing tool or device, an unreachable simulator, a handle that
    holds something other than a P-256 signing key. Exit 1, like any unreachable peer."""
