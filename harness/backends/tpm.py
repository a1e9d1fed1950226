"""The `tpm` backend: the `local` backend whose CI release key lives in a TPM.

Every fleet artifact, rollout manifest and sidecar the CP and the agents verify in a
run is signed by TPM2_Sign (hw.tpm) through `ReleaseKit`'s signer port; the fleet's
trust.json names the TPM key. The TPM is a swtpm this backend starts in the run's
workdir and stops (CI), or a lab TPM named by `NIXFLEET_TPM_TCTI` (e.g.
`device:/dev/tpmrm0`, which `fleet-harness --tcti` sets), its key at
`NIXFLEET_TPM_HANDLE` (default 0x81010002, created when empty).

A TPM signs P-256 only, so the shape's release key is P-256 whatever it asked. Its
signatures are published as the TPM made them: when the scenario asked for
`release_key="ecdsa-p256"` (the seed 000 high-s plan: installed release low-s, every
later signature high-s) the kit publishes the first TPM draw with the s the plan
wants; otherwise each signature is the TPM's first draw (s > n/2 about half the time).
`Fleet.release_signer()` hands the TPM to a scenario; `ran_on()` names the TPM in
the run's result (`Outcome.ran_on`: console and `--report`): manufacturer, vendor
string, firmware version (TPM2_GetCapability), TCTI and key handle.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from harness.backends import local
from harness.fleet import Shape
from harness.runner import BackendUnavailable
from hw.tpm import DEFAULT_HANDLE, Swtpm, TpmError, TpmKey, parse_handle
from hw.tpm.key import check_tcti
from hw.tpm.swtpm import missing as swtpm_missing
from nixfleet.core.signing import ECDSA_P256

TCTI_ENV = "NIXFLEET_TPM_TCTI"
HANDLE_ENV = "NIXFLEET_TPM_HANDLE"


class TpmFleetBackend(local.LocalFleetBackend):
    backend = "tpm"
    tpm: str = ""
    """The TPM that signed this run's releases, as `ran_on` names it."""

    def ran_on(self) -> list[str]:
        return [self.tpm]


def lab_tcti() -> str | None:
    """The lab TPM to use instead of a swtpm (None: start a swtpm)."""
    return os.environ.get(TCTI_ENV) or None


def available() -> str | None:
    """Why the tpm backend cannot run here, in one line (None: it can)."""
    why = local.available()
    if why is not None:
        return why.replace("the local backend", "the tpm backend (local + a TPM)")
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError as exc:
        return f"the tpm backend needs tpm2-pytss ({exc}; it builds against libtss2-dev)"
    tcti = lab_tcti()
    if tcti is None:
        return swtpm_missing()
    try:
        check_tcti(tcti)
        parse_handle(os.environ.get(HANDLE_ENV, f"{DEFAULT_HANDLE:#x}"))
    except TpmError as exc:
        return f"{TCTI_ENV}={tcti}: {exc}"
    return None


@contextlib.contextmanager
def open_fleet(shape: Shape, workdir: Path, mutant: str | None) -> Iterator[TpmFleetBackend]:
    why = available()
    if why is not None:
        raise BackendUnavailable(why)
    with contextlib.ExitStack() as stack:
        tcti = lab_tcti()
        if tcti is None:
            tcti = stack.enter_context(Swtpm.start(workdir / "swtpm")).tcti
        handle = parse_handle(os.environ.get(HANDLE_ENV, f"{DEFAULT_HANDLE:#x}"))
        try:
            key = stack.enter_context(TpmKey.open(tcti, handle))
        except TpmError as exc:
            raise BackendUnavailable(str(exc)) from None
        planned = shape.release_key == ECDSA_P256
        fleet = TpmFleetBackend(
            replace(shape, release_key=ECDSA_P256), workdir, mutant, signer=key
        )
        stack.callback(fleet.close)
        # Release 0 is out (low-s); from here on, the plan's s or the TPM's own draw.
        fleet.local.env.kit.high_s = planned
        if not planned:
            fleet.local.env.kit.pick_s = False
        fleet.tpm = f"TPM {key.identity().line()} ({tcti}, key {handle:#x})"
        yield fleet


__all__ = ["HANDLE_ENV", "TCTI_ENV", "TpmFleetBackend", "available", "open_fleet"]
