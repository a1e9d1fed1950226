"""Evidence signing with the SSH host key (lifecycle §5.12, protocol §2.7).

Reports whose event the §2.7 catalogue marks signed carry `signature`: base64 ed25519
over the JCS payload `wire.report_evidence_payload` builds. The checkin's
`lastConfirmedAt` attestation is base64 ed25519 over JCS `{hostname, rolloutId,
lastConfirmedAt}` with the attested text as is. Without a host key everything goes
out unsigned (the CP stores `unsigned`; bad signatures never gate).
"""

from __future__ import annotations

import base64
import logging
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nixfleet.core.errors import BadInput
from nixfleet.core.hostkey import load_host_private_key
from nixfleet.core.signing import sign
from nixfleet.core.wire import (
    ReportRequest,
    attestation_payload,
    is_signed_event,
    report_evidence_payload,
)

log = logging.getLogger("nixfleet.agent")


def load_host_key(path: Path, *, required: bool) -> Ed25519PrivateKey | None:
    """The ed25519 host key at `path`; a missing file is None unless `required`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise BadInput(f"cannot read SSH host key {path} (no such file)") from None
        return None
    except OSError as exc:
        raise BadInput(f"cannot read SSH host key {path} ({exc.strerror or exc})") from exc
    return load_host_private_key(data, source=f"SSH host key {path}")


class EvidenceSigner:
    """Signs catalogued report events and the lastConfirmedAt attestation."""

    def __init__(self, key: Ed25519PrivateKey | None) -> None:
        self._key = key
        self._attested: tuple[tuple[str, str, str], str] | None = None
        """The last attestation: the same claim goes out with every checkin, and
        ed25519 signatures are deterministic, so it is signed once."""

    @property
    def can_sign(self) -> bool:
        return self._key is not None

    def _sign(self, payload: bytes) -> str:
        assert self._key is not None
        return base64.b64encode(sign(self._key, payload)).decode("ascii")

    def sign_report(self, report: ReportRequest) -> ReportRequest:
        """`report` with `signature` set if its event is signed and a key is loaded."""
        if self._key is None or not is_signed_event(report.event):
            return report
        return replace(report, signature=self._sign(report_evidence_payload(report)))

    def attest(self, *, hostname: str, rollout_id: str, last_confirmed_at: str) -> str | None:
        """base64 signature over `{hostname, rolloutId, lastConfirmedAt}`, or None."""
        if self._key is None:
            return None
        claim = (hostname, rollout_id, last_confirmed_at)
        if self._attested is None or self._attested[0] != claim:
            payload = attestation_payload(
                hostname=hostname, rollout_id=rollout_id, last_confirmed_at=last_confirmed_at
            )
            self._attested = (claim, self._sign(payload))
        return self._attested[1]
