"""Seed 001 "When this fails", bullet 2: after the DB wipe agents don't reconnect, usually
cert expiry or revocation; the agent's journal says which, and the bootstrap-token flow
re-enrols the host.

Host A was off through the outage, past its certificate's validity; host B is revoked by
CI's signed sidecar, which the restarted CP replays. Neither checks in for 3 polls, and
each agent's log names its cause: B the CP's 401 (revoked); A its expired certificate,
which the CP's TLS layer drops with no reason the agent could read, and why its
re-enrolment failed (its old token's nonce is spent: 409). The operator mints a fresh
token, CI signs its allowlist entry, agenix deploys it and the agent is restarted
(docs: bootstrap-token lifecycle, "Triggering enrolment"): A re-enrols and checks in
within 2 polls; B stays refused. The mutant is the Old agent, which never looks at its
certificate's notAfter: its log shows a bare reset and it never re-enrols.
"""

from harness.enrollsteps import entry
from harness.fleet import CHECKIN, CHECKIN_FAILED, CP_START, Fleet, Scenario, Shape, expect
from harness.steps import dr_restart

MISSED_POLLS = 3
BACK_WITHIN_POLLS = 2
CAUSE_WITHIN_POLLS = 12
"""A failing agent backs off up to 8 polls (× 1.2 jitter) between checkins."""
ALLOWLIST_APPLIED = "bootstrap-nonces poll: allowlist verified + applied entries="


def since(fleet: Fleet, kind: str, host: str, t: float) -> list[str]:
    """Details of `host`'s `kind` events from `t` on: the reason of a failed checkin."""
    return [str(e.detail.get("reason", e.detail)) for e in fleet.history.of(kind, host) if e.t >= t]


def allowlist_applied(fleet: Fleet, entries: int) -> bool:
    out = fleet.operator(f'grep -F "{ALLOWLIST_APPLIED}{entries}" "$CP_LOG" || true')
    return bool(out.strip())


def dropped_out(fleet: Fleet, expired: str, revoked: str, back: float) -> None:
    """Both miss 3 polls from the CP's restart, each agent's log saying why."""
    hosts = (expired, revoked)
    fleet.wait_until(
        lambda: all(since(fleet, CHECKIN_FAILED, h, back) for h in hosts),
        fleet.polls(CAUSE_WITHIN_POLLS),
        f"{expired} and {revoked} to log a failed checkin after the restart",
    )
    fleet.sleep(max(0.0, back + fleet.polls(MISSED_POLLS) - fleet.now()))
    for host in hosts:
        back_in = since(fleet, CHECKIN, host, back)
        expect(not back_in, f"{host} to miss {MISSED_POLLS} polls after the wipe", back_in)
    a_why = since(fleet, CHECKIN_FAILED, expired, back)
    expect(
        any("expired at" in r and "HTTP 409" in r for r in a_why),
        f"{expired}'s agent log to name its cause: its client certificate expired, and its "
        "re-enrolment with the spent bootstrap token refused (409)",
        a_why[-1],
    )
    b_why = since(fleet, CHECKIN_FAILED, revoked, back)
    expect(
        any("HTTP 401" in r and "revoked" in r for r in b_why),
        f"{revoked}'s agent log to name its cause: 401, its certificate revoked",
        b_why[-1],
    )


def reenrol(fleet: Fleet, host: str) -> None:
    """The bootstrap-token flow: mint, CI signs the allowlist entry, deploy, restart."""
    token = fleet.mint_token(host)
    fleet.publish_nonces([entry(token)])
    listed = len(fleet.hosts) + 1
    fleet.wait_until(
        lambda: allowlist_applied(fleet, listed),
        fleet.polls(3),
        f"the CP to apply the allowlist with {host}'s fresh nonce",
    )
    fleet.deploy_token(host, token)
    trigger = fleet.now()
    fleet.kill_agent(host)
    fleet.start_agent(host)
    fleet.wait_until(
        lambda: bool(since(fleet, CHECKIN, host, trigger)),
        fleet.polls(BACK_WITHIN_POLLS),
        f"{host} to re-enrol and check in within {BACK_WITHIN_POLLS} polls of its restart "
        "with the fresh token",
    )


def steps(fleet: Fleet) -> None:
    expired, revoked = sorted(fleet.hosts)[:2]
    fleet.revoke([revoked], reason="compromised")
    fleet.kill_agent(expired)  # off through the outage, longer than its cert lived
    fleet.expire_cert(expired)
    dr_restart(fleet)
    back = max(e.t for e in fleet.history.of(CP_START))
    fleet.start_agent(expired)
    dropped_out(fleet, expired, revoked, back)
    reenrol(fleet, expired)
    whoami = fleet.call("GET", "/v1/whoami", as_=expired)
    expect(whoami.status == 200, f"{expired}'s new certificate to be accepted", whoami.line())
    still = fleet.call("GET", "/v1/whoami", as_=revoked)
    expect(
        still.status == 401 and b"revoked" in still.body,
        f"{revoked} to stay refused with 401 (revoked)",
        still.line(),
    )
    back_in = since(fleet, CHECKIN, revoked, back)
    expect(not back_in, f"revoked {revoked} never to check in after the wipe", back_in)


SCENARIO = Scenario(
    id="dr-fail-agents-dont-reconnect",
    source="001 bullet 2; `docs/operations/bootstrap-token-lifecycle.md`",
    summary="after the wipe: expired A and revoked B drop out, each agent logging why; "
    "a fresh token re-enrols A within 2 polls, B stays 401",
    shape=Shape(hosts=2, local_hosts=2, revocations_sidecar=True, nonce_allowlist=True, seed=17),
    steps=steps,
    checks=[],
    mutant="agent-ignores-expired-cert",
    backends=frozenset({"qemu", "local"}),
)
