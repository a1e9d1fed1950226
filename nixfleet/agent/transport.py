"""`HttpCpTransport`: the agent's calls to the CP over HTTPS with mTLS (aiohttp).

One `aiohttp.ClientSession` for the process, so checkins reuse their connection
(keep-alive); every request carries `X-Nixfleet-Protocol: 1` (protocol §1.1).
`/v1/enroll` goes without a client certificate; every other call presents the
agent cert with the SSH host key (PKCS#8) as its key.

Errors: no HTTP answer at all (refused, reset, TLS failure, timeout) raises
`Unreachable`; an answer with an unexpected status raises `HttpError` (a
`PeerError` carrying the status); an unparseable body raises `PeerError`.
Timeouts: connect 10 s, request 30 s (lifecycle constants).
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from nixfleet import __version__
from nixfleet.core import protocol, wire
from nixfleet.core.canonical import load_json
from nixfleet.core.errors import BadInput, NixfleetError, PeerError, Unreachable

log = logging.getLogger("nixfleet.agent")

CONNECT_TIMEOUT_SECS = 10.0
REQUEST_TIMEOUT_SECS = 30.0
AGENT_VERSION = __version__
KEEPALIVE_SECS = 70.0
"""Idle connections are kept for the next poll (60 s), and dropped before the CP's own
75 s keep-alive ends them, so a reused connection is never one the CP just closed."""


class HttpError(PeerError):
    """The CP answered with a status the call does not accept."""

    def __init__(self, what: str, url: str, status: int, body: bytes) -> None:
        reason = _body_reason(body)
        super().__init__(f"{what}: {url} (HTTP {status}{': ' + reason if reason else ''})")
        self.status = status
        self.reason = reason


def _body_reason(body: bytes) -> str:
    """The CP's `{"error", "reason"}` text, else the start of the body, on one line."""
    text = body.decode("utf-8", "replace").strip()
    try:
        value = load_json(body, source="error body")
    except NixfleetError:
        value = None
    if isinstance(value, dict):
        parts = [str(value[k]) for k in ("error", "reason") if isinstance(value.get(k), str)]
        text = ": ".join(parts) or text
    return " ".join(text.split())[:200]


def client_ssl_context(
    ca_cert: Path | None, cert: Path | None = None, key_pem: bytes | None = None
) -> ssl.SSLContext:
    """Trust `ca_cert` (None: the system store); present `cert` with `key_pem` if given."""
    try:
        ctx = ssl.create_default_context(cafile=str(ca_cert) if ca_cert is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise BadInput(f"cannot load CA certificate {ca_cert} ({_ssl_why(exc)})") from exc
    if cert is not None and key_pem is not None:
        # ssl loads keys only from files: a private temp file, removed at once.
        with tempfile.TemporaryDirectory(prefix="nixfleet-agent-") as tmp:
            key_path = os.path.join(tmp, "key.pem")
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key_pem)
            try:
                ctx.load_cert_chain(str(cert), key_path)
            except (OSError, ssl.SSLError) as exc:
                raise BadInput(
                    f"cannot use client certificate {cert} with the agent key ({_ssl_why(exc)})"
                ) from exc
    return ctx


def _ssl_why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())


class HttpCpTransport:
    """The agent's CP client. `set_identity` (re)loads the client cert after enrolment
    or renewal; until then only `enroll` works."""

    def __init__(
        self,
        base_url: str,
        *,
        ca_cert: Path | None,
        connect_timeout: float = CONNECT_TIMEOUT_SECS,
        request_timeout: float = REQUEST_TIMEOUT_SECS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._ca_cert = ca_cert
        self._anonymous = client_ssl_context(ca_cert)
        self._mtls: ssl.SSLContext | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout, sock_connect=connect_timeout, connect=connect_timeout
        )
        self._session: aiohttp.ClientSession | None = None

    def set_identity(self, cert: Path, key_pem: bytes) -> None:
        self._mtls = client_ssl_context(self._ca_cert, cert, key_pem)

    @property
    def has_identity(self) -> bool:
        return self._mtls is not None

    def url(self, path: str) -> str:
        return self.base_url + path

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={protocol.HEADER: str(protocol.MAJOR)},
                connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_SECS),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> HttpCpTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the one request primitive ------------------------------------------------------

    async def request(
        self,
        what: str,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        anonymous: bool = False,
    ) -> tuple[int, bytes]:
        """(status, body); Unreachable if no HTTP answer came."""
        url = self.url(path)
        ctx = self._anonymous if anonymous else self._mtls
        if ctx is None:
            raise BadInput(f"{what}: {url} (no client certificate loaded)")
        ssl_arg: ssl.SSLContext | bool = ctx if url.startswith("https:") else False
        try:
            async with self._open().request(method, url, json=body, ssl=ssl_arg) as resp:
                return resp.status, await resp.read()
        except TimeoutError as exc:
            raise Unreachable(f"{what}: {url} (timed out)") from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise Unreachable(
                f"{what}: {url} (TLS certificate not trusted: {exc.certificate_error})"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(
                f"{what}: {url} (connect failed: {_one_line(_os_reason(exc.os_error))})"
            ) from exc
        except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
            raise Unreachable(
                f"{what}: {url} ({type(exc).__name__}: {_one_line(str(exc)) or 'no answer'})"
            ) from exc

    async def _json(
        self, what: str, method: str, path: str, *, body: Mapping[str, Any], ok: int = 200,
        anonymous: bool = False,
    ) -> Any:  # fmt: skip
        status, raw = await self.request(what, method, path, body=body, anonymous=anonymous)
        if status != ok:
            raise HttpError(what, self.url(path), status, raw)
        try:
            return load_json(raw, source=f"{what} response")
        except NixfleetError as exc:
            raise PeerError(f"{what}: {self.url(path)} (bad response body: {exc})") from exc

    @staticmethod
    def _parse(what: str, parse: Any, value: Any) -> Any:
        try:
            return parse(value, source=f"{what} response")
        except NixfleetError as exc:
            raise PeerError(f"{what}: bad response ({exc})") from exc

    # --- the calls ---------------------------------------------------------------------------

    async def checkin(self, req: wire.CheckinRequest) -> wire.CheckinResponse:
        value = await self._json(
            "checkin", "POST", protocol.CHECKIN, body=wire.dump_checkin_request(req)
        )
        result: wire.CheckinResponse = self._parse("checkin", wire.parse_checkin_response, value)
        return result

    async def confirm(self, req: wire.ConfirmRequest, endpoint: str) -> int:
        """The status of the confirm: 204 confirmed, 410 roll back, other: retry."""
        path = endpoint if endpoint.startswith("/") else "/" + endpoint
        status, _raw = await self.request(
            "confirm", "POST", path, body=wire.dump_confirm_request(req)
        )
        return status

    async def report(self, req: wire.ReportRequest) -> wire.ReportAccepted:
        value = await self._json(
            "report", "POST", protocol.REPORT, body=wire.dump_report_request(req)
        )
        result: wire.ReportAccepted = self._parse("report", wire.parse_report_accepted, value)
        return result

    async def fetch_manifest(self, rollout_id: str) -> tuple[bytes, bytes]:
        """The manifest bytes and its raw signature, as served."""
        out = []
        for route in (protocol.ROLLOUT, protocol.ROLLOUT_SIG):
            path = route.format(rid=rollout_id)
            status, raw = await self.request("rollout manifest", "GET", path)
            if status != 200:
                raise HttpError("rollout manifest", self.url(path), status, raw)
            out.append(raw)
        return out[0], out[1]

    async def enroll(self, req: wire.EnrollRequest) -> wire.CertIssued:
        value = await self._json(
            "enroll", "POST", protocol.ENROLL, body=wire.dump_enroll_request(req), anonymous=True
        )
        result: wire.CertIssued = self._parse("enroll", wire.parse_enroll_response, value)
        return result

    async def renew(self, req: wire.RenewRequest) -> wire.CertIssued:
        value = await self._json("renew", "POST", protocol.RENEW, body=wire.dump_renew_request(req))
        result: wire.CertIssued = self._parse("renew", wire.parse_renew_response, value)
        return result


def _os_reason(err: OSError) -> str:
    """An OSError as a reason: its text, else its errno's name, else its type (a refused
    connection can come with an empty message)."""
    if err.errno is not None and not err.strerror:
        return os.strerror(err.errno)
    return str(err).strip() or type(err).__name__
