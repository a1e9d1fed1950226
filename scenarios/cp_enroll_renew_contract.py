"""`cp-enroll-renew-contract`: what `/v1/enroll` and `/v1/agent/renew` answer, check by
check (protocol §1.3): a certificate only for a valid, allowlisted, unspent token and a
CSR of the host's declared SSH host key; renewal only for a live agent certificate and
that same key. The Old: a bad token, a foreign key or a revoked certificate still got a
certificate."""

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from harness.enrollsteps import RENEW, enroll, entry, reason, said
from harness.fleet import Fleet, Reply, Scenario, Shape, expect
from nixfleet.core.timeutil import format_instant

REVOKE = (
    'sqlite3 state.db "INSERT INTO cert_revocations (hostname, not_before, reason, revoked_by) '
    "VALUES ('{host}', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'), 'compromised', 'ops')\""
)
"""Seed 002's revocation INSERT, with an RFC 3339 UTC `not_before`."""


def refused(what: str, reply: Reply, status: int, because: str) -> None:
    expect(
        reply.status == status and because in reason(reply),
        f"{what}: {status} saying {because!r}",
        said(reply),
    )


def tampered(token: Any) -> Any:
    """The token with `expiresAt` pushed a year on, its signature left as it was."""
    out = copy.deepcopy(token)
    expires = datetime.fromisoformat(out["claims"]["expiresAt"].replace("Z", "+00:00"))
    out["claims"]["expiresAt"] = format_instant(expires + timedelta(days=365))
    return out


def enrollment(fleet: Fleet, host: str) -> None:
    ok, forged = fleet.mint_token(host), fleet.mint_token(host)
    foreign = fleet.mint_token(host, key_of="impostor")
    unlisted, other_host, expired = (fleet.mint_token(host) for _ in range(3))
    ghost = fleet.mint_token("ghost")
    past = format_instant(datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1))
    fleet.publish_nonces(
        [
            entry(ok),
            entry(forged),
            entry(foreign),
            entry(other_host, hostname="ghost"),
            entry(expired, expiresAt=past),
            entry(ghost),
        ]
    )
    # The first 200 comes once the CP applied the allowlist (a 401 spends nothing).
    fleet.wait_until(
        lambda: enroll(fleet, host, ok).status == 200, fleet.polls(3), "the valid token's 200"
    )
    got = fleet.call("GET", "/v1/whoami", as_=host)  # the path a cert then takes
    expect(got.status == 200, "the enrolled host's certificate to work", got.line())
    refused("tampered token", enroll(fleet, host, tampered(forged)), 401, "bad-signature")
    refused(
        "CSR of a key not declared for the host",
        enroll(fleet, host, foreign, key_of="impostor"),
        401,
        "declared SSH host key",
    )
    refused("nonce not allowlisted", enroll(fleet, host, unlisted), 401, "nonce_not_allowlisted")
    refused(
        "allowlist host ≠ token host",
        enroll(fleet, host, other_host),
        401,
        "allowlist hostname differs",
    )
    refused("expired allowlist entry", enroll(fleet, host, expired), 401, "entry expired")
    refused("undeclared host", enroll(fleet, "ghost", ghost), 401, "not declared")
    refused("replayed token", enroll(fleet, host, ok), 409, "already used")


def renewal(fleet: Fleet, host: str) -> None:
    renewed = fleet.call("POST", RENEW, as_=host, body={"csrPem": fleet.csr(host)})
    expect(
        renewed.status == 200 and "certPem" in renewed.json(),
        "renew with the host's cert and key: 200 with a certificate",
        said(renewed),
    )
    anonymous = fleet.call("POST", RENEW, as_=None, body={"csrPem": fleet.csr(host)})
    expect(anonymous.status == 401, "renew without a client certificate: 401", said(anonymous))
    foreign = fleet.call("POST", RENEW, as_=host, body={"csrPem": fleet.csr(host, key_of="x")})
    refused("renew with a CSR of another key", foreign, 401, "declared SSH host key")
    # The row names the short hostname; the agent's certificate has the canonical CN.
    fleet.sleep(1.0)  # the cert's notBefore (whole seconds) strictly before the row's
    fleet.operator(REVOKE.format(host=host))
    revoked = fleet.call("POST", RENEW, as_=host, body={"csrPem": fleet.csr(host)})
    expect(revoked.status == 401, "renew with a revoked certificate: 401", said(revoked))


def steps(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    enrollment(fleet, host)
    renewal(fleet, host)


SCENARIO = Scenario(
    id="cp-enroll-renew-contract",
    source="`CPT/enroll.rs`, `renew.rs`, `bootstrap_report.rs`",
    summary="enroll 200 / 401 ×6 / 409 and renew 200 / 401 ×3, check by check",
    shape=Shape(hosts=1, local_hosts=1, nonce_allowlist=True, seed=44),
    steps=steps,
    checks=[],
    mutant="csr-not-bound-to-declared-key",
    backends=frozenset({"local"}),
)
