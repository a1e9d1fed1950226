"""Steps the enrollment scenarios share: a new host's `/v1/enroll`, as one request or
many sent together, and the allowlist entry of a token."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .fleet import Fleet, Reply

ENROLL = "/v1/enroll"
RENEW = "/v1/agent/renew"


def enroll(fleet: Fleet, host: str, token: Any, *, key_of: str | None = None) -> Reply:
    """POST `{token, csrPem}` with no client certificate, as a new host does: the CSR
    has CN `host` and is signed by `key_of`'s SSH host key (default `host`'s own)."""
    body = {"token": token, "csrPem": fleet.csr(host, key_of=key_of)}
    return fleet.call("POST", ENROLL, as_=None, body=body)


def enroll_together(fleet: Fleet, host: str, token: Any, n: int) -> list[Reply]:
    """`n` enrolls of the same token and CSR, sent at once (one thread each)."""
    body = {"token": token, "csrPem": fleet.csr(host)}
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(fleet.call, "POST", ENROLL, as_=None, body=body) for _ in range(n)]
        return [f.result() for f in futures]


def entry(token: Mapping[str, Any], **override: str) -> dict[str, str]:
    """The `bootstrapNonces` entry `nixfleet mint-token` prints for `token` (fields
    overridden by `override`: `hostname`, `expiresAt`)."""
    claims = token["claims"]
    out = {
        "nonce": str(claims["nonce"]),
        "hostname": str(claims["hostname"]),
        "expiresAt": str(claims["expiresAt"]),
    }
    out.update(override)
    return out


def reason(reply: Reply) -> str:
    """The refusal's reason (the JSON error body's `reason`), else the raw line."""
    try:
        return str(reply.json().get("reason", reply.line()))
    except (ValueError, AttributeError):
        return reply.line()


def statuses(replies: list[Reply]) -> list[int]:
    return sorted(r.status for r in replies)


def said(reply: Reply) -> str:
    """For step failures: the status and the refusal's reason (a 200 issued a cert)."""
    return (
        "200 (a certificate issued)" if reply.status == 200 else f"{reply.status} {reason(reply)}"
    )
