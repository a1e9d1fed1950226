"""The agent's mTLS identity: enrolment with the bootstrap token, then renewal.

Enrolment (protocol §1.3, §2.5, §3.4): with no client certificate, POST
`/v1/enroll {token, csrPem}` without a client cert; the CSR (CN = machine id) is
signed with the agent key, which is the SSH host key unless `--client-key` names
another (the CP insists on the declared host key either way). The answer's
`certPem` is written atomically to `--client-cert`. A CP that is not ready (503,
cold start) is asked again every 10 s, a refusal or no answer with a growing
delay: the daemon keeps running instead of crash-looping (lifecycle §4.9). A 409
(the token's nonce is already spent) is final: one line, exit 2.

Renewal: before a checkin, when less than `--renewal-threshold-fraction` (0.5) of
the certificate's validity remains, POST `/v1/agent/renew {csrPem}` over mTLS and
swap the new certificate in; a failure is logged and tried again next checkin.

Expiry (seed 001 "Agents don't reconnect"): a certificate past its notAfter can be
neither presented (the CP's TLS layer drops it without a reason the agent could read)
nor renewed. Before a checkin the agent names that cause and re-enrols with the
bootstrap token, read afresh each time, so a new token the operator deployed is used;
until that works each checkin fails with the cause and why re-enrolment failed.

The certificate's CN must be the machine id: bare, or `agent-<id>.<suffix>` as the
CP issues it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.x509.oid import NameOID

from nixfleet.core.canonical import load_json
from nixfleet.core.errors import BadInput, NixfleetError, PeerError, Unreachable
from nixfleet.core.timeutil import format_instant
from nixfleet.core.token import dump_token, parse_token
from nixfleet.core.wire import CertIssued, EnrollRequest, RenewRequest

from .csr import build_csr_for_key
from .statedir import atomic_write

log = logging.getLogger("nixfleet.agent")

NOT_READY_RETRY_SECS = 10.0
MAX_BACKOFF_EXPONENT = 3
HTTP_NOT_READY = 503
HTTP_CONFLICT = 409
"""The token's nonce is spent (another enrolment used it first): asking again with the
same token can never succeed."""


class CertAuthority(Protocol):
    """The CP's issuing routes; raise Unreachable (no answer) or PeerError (refusal,
    with `.status` when there was an HTTP answer)."""

    async def enroll(self, req: EnrollRequest) -> CertIssued: ...

    async def renew(self, req: RenewRequest) -> CertIssued: ...

    def set_identity(self, cert: Path, key_pem: bytes) -> None: ...


Wait = Callable[[float], Awaitable[bool]]
"""Sleep for so many seconds; False if the daemon is stopping meanwhile."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CertInfo:
    cn: str
    not_before: datetime
    not_after: datetime

    def needs_renewal(self, now: datetime, fraction: float) -> bool:
        validity = self.not_after - self.not_before
        return self.not_after - now < validity * fraction


def cert_info(pem: bytes, *, source: str) -> CertInfo:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise BadInput(f"{source}: not a PEM certificate ({exc})") from exc
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    return CertInfo(cn=cn, not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc)


def read_cert(path: Path) -> CertInfo | None:
    """The client certificate at `path`; None if there is none yet."""
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadInput(f"cannot read client certificate {path} ({exc.strerror or exc})") from exc
    return cert_info(pem, source=f"client certificate {path}")


def cn_matches(cn: str, machine_id: str) -> bool:
    return cn == machine_id or cn.startswith(f"agent-{machine_id}.")


def check_cn(info: CertInfo, machine_id: str, path: Path) -> None:
    if not cn_matches(info.cn, machine_id):
        raise BadInput(
            f"client certificate {path}: CN {info.cn!r} does not match --machine-id "
            f"{machine_id!r} (want {machine_id!r} or 'agent-{machine_id}.<suffix>')"
        )


def load_token(path: Path, machine_id: str) -> Mapping[str, Any]:
    """The bootstrap token as JSON, shape-checked and issued for this machine."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read bootstrap token {path} ({exc.strerror or exc})") from exc
    source = f"bootstrap token {path}"
    token = parse_token(load_json(raw, source=source), source=source)
    if token.version != 1:
        raise BadInput(f"{source}: version {token.version} is not supported (want 1)")
    if token.claims.hostname != machine_id:
        raise BadInput(
            f"{source}: issued for {token.claims.hostname!r}, not --machine-id {machine_id!r}"
        )
    return dump_token(token)


class Identity:
    """Enrols if needed, keeps the certificate fresh, and loads it into the transport."""

    def __init__(
        self,
        *,
        ca: CertAuthority,
        cert_path: Path,
        key: Any,
        key_pem: bytes,
        machine_id: str,
        token_path: Path | None,
        renewal_fraction: float,
        retry_base_secs: float,
    ) -> None:
        self._ca = ca
        self.cert_path = cert_path
        self._key = key
        self._key_pem = key_pem
        self.machine_id = machine_id
        self._token_path = token_path
        self._fraction = renewal_fraction
        self._retry_base = retry_base_secs
        self.info: CertInfo | None = None

    def load(self) -> bool:
        """Load an existing certificate into the transport; False if there is none."""
        info = read_cert(self.cert_path)
        if info is None:
            return False
        check_cn(info, self.machine_id, self.cert_path)
        self._ca.set_identity(self.cert_path, self._key_pem)
        self.info = info
        return True

    def token(self) -> Mapping[str, Any]:
        if self._token_path is None:
            raise BadInput(
                f"no client certificate at {self.cert_path} and no --bootstrap-token-file "
                "to enrol with"
            )
        return load_token(self._token_path, self.machine_id)

    def _csr(self) -> str:
        return build_csr_for_key(self._key, self.machine_id)

    def _install(self, issued: CertIssued) -> CertInfo:
        pem = issued.cert_pem.encode("utf-8")
        info = cert_info(pem, source="issued certificate")
        check_cn(info, self.machine_id, self.cert_path)
        try:
            self.cert_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.cert_path, pem, mode=0o644)
        except OSError as exc:
            raise BadInput(
                f"cannot write client certificate {self.cert_path} ({exc.strerror or exc})"
            ) from exc
        self._ca.set_identity(self.cert_path, self._key_pem)
        self.info = info
        return info

    async def enroll(self, wait: Wait) -> bool:
        """Enrol until it works; False if the daemon was stopped first."""
        token = self.token()
        request = EnrollRequest(token=token, csr_pem=self._csr())
        failures = 0
        while True:
            try:
                issued = await self._ca.enroll(request)
            except (Unreachable, PeerError) as exc:
                status = getattr(exc, "status", None)
                if status == HTTP_CONFLICT:
                    raise BadInput(
                        f"enroll: bootstrap token {self._token_path} was already used "
                        f"({exc}); mint a new token for {self.machine_id}"
                    ) from exc
                if status == HTTP_NOT_READY:
                    delay = NOT_READY_RETRY_SECS
                    log.warning("enroll: control plane not ready; retrying in %g s", delay)
                else:
                    delay = self._retry_base * 2 ** min(failures, MAX_BACKOFF_EXPONENT)
                    failures += 1
                    log.warning("enroll failed; retrying in %g s reason=%s", delay, exc)
                if not await wait(delay):
                    return False
                continue
            info = self._install(issued)
            log.info(
                "enrolled cn=%s not_after=%s cert=%s",
                info.cn,
                format_instant(info.not_after),
                self.cert_path,
            )
            return True

    async def reenroll_if_expired(self, now: datetime) -> str | None:
        """Re-enrol with the bootstrap token if the certificate has expired; the cause and
        why re-enrolment failed, or None once the certificate is usable."""
        info = self.info
        if info is None or now < info.not_after:
            return None
        cause = f"client certificate {self.cert_path} expired at {format_instant(info.not_after)}"
        if self._token_path is None:
            return f"{cause}; no --bootstrap-token-file to re-enrol with"
        try:
            request = EnrollRequest(token=self.token(), csr_pem=self._csr())
            new = self._install(await self._ca.enroll(request))
        except NixfleetError as exc:
            return f"{cause}; re-enrolment with bootstrap token {self._token_path} failed: {exc}"
        log.info(
            "re-enrolled after expiry cn=%s not_after=%s cert=%s",
            new.cn,
            format_instant(new.not_after),
            self.cert_path,
        )
        return None

    def needs_renewal(self, now: datetime) -> bool:
        return self.info is not None and self.info.needs_renewal(now, self._fraction)

    async def renew_if_due(self, now: datetime) -> str | None:
        """Renew if less than the threshold of validity remains; why it failed, or None."""
        if not self.needs_renewal(now):
            return None
        try:
            issued = await self._ca.renew(RenewRequest(csr_pem=self._csr()))
            info = self._install(issued)
        except NixfleetError as exc:
            log.warning("renewal failed; trying again next checkin reason=%s", exc)
            return str(exc)
        log.info("renewed cn=%s not_after=%s", info.cn, format_instant(info.not_after))
        return None

    def remaining(self, now: datetime) -> timedelta | None:
        return None if self.info is None else self.info.not_after - now


async def wait_or_stop(stop: asyncio.Event, secs: float) -> bool:
    """Sleep `secs` unless `stop` is set first; True if still running."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, secs))
    except TimeoutError:
        return True
    return False
