"""Seed 004 Surface: the machine id is the client certificate's CN.

An agent's certificate speaks for its own host only: a checkin, confirm or report whose
body names another host is 403, whatever the body says. Without a client certificate
TLS still completes and every mTLS route answers 401, while `/v1/enroll` stays
reachable (a host without a cert must be able to enrol). Enroll and renew bind the CSR
to the host's declared SSH host key: a CSR signed by another key is 401. The mutant is
the reference's Old: the CP trusting the body's hostname (`endpoints.same_host`).
"""

from typing import Any

from fleet_sim.checkers import Run, Verdict
from harness.cpenv import checkin_body, confirm_body, report_body
from harness.fleet import CALL, Fleet, NotAvailable, Reply, Scenario, Shape, expect
from harness.steps import newest_rollout
from nixfleet.core import protocol

IMPOSTOR = {"reason": "scenario: body names another host"}
"""The details of a report whose body names another host."""


def bodies(fleet: Fleet, named: str) -> dict[str, dict[str, Any]]:
    """A checkin, confirm and report whose body names `named`."""
    closure, rid = fleet.current(named), newest_rollout(fleet)
    assert closure is not None and rid is not None
    return {
        protocol.CHECKIN: checkin_body(named, closure),
        protocol.CONFIRM: confirm_body(named, rid, closure),
        protocol.REPORT: report_body(named, "rollback-triggered", IMPOSTOR, rollout=rid),
    }


def body_names_cn(fleet: Fleet, me: str, other: str) -> None:
    """The CN binds: the same calls pass with my own name, are 403 with another's."""
    own = fleet.call("POST", protocol.CHECKIN, as_=me, body=bodies(fleet, me)[protocol.CHECKIN])
    expect(own.status == 200, f"{me}'s checkin naming itself answered 200", own.line())
    for path, body in bodies(fleet, other).items():
        reply = fleet.call("POST", path, as_=me, body=body)
        expect(
            reply.status == 403,
            f"{path} with {me}'s certificate and body hostname {other} answered 403 "
            "(the CN, not the body, names the host)",
            reply.line(),
        )


def no_client_cert(fleet: Fleet, me: str) -> None:
    """TLS completes without a client cert; mTLS routes 401; enroll is reachable."""
    calls = [
        ("GET", protocol.WHOAMI, None),
        *(("POST", p, b) for p, b in bodies(fleet, me).items()),
    ]
    for method, path, body in calls:
        reply = fleet.call(method, path, as_=None, body=body)
        expect(reply.status != 0, f"TLS without a client certificate to complete ({path})")
        expect(
            reply.status == 401, f"{path} without a client certificate answered 401", reply.line()
        )
    enroll = fleet.call("POST", protocol.ENROLL, as_=None, body={"token": {}, "csrPem": ""})
    if enroll.status == 501:  # the simulated CP has no enrollment
        return
    expect(
        enroll.status not in (0, 401, 403),
        "/v1/enroll to stay reachable without a client certificate (its own 4xx, not 401)",
        enroll.line(),
    )


def csr_binds_host_key(fleet: Fleet, me: str, other: str) -> None:
    """Enroll and renew refuse a CSR signed by another host's key (401)."""
    try:
        token, foreign = fleet.mint_token(me), fleet.csr(me, key_of=other)
        own = fleet.csr(me)
    except NotAvailable:
        return  # no enrollment on this backend (the simulated CP)
    renewed = fleet.call("POST", protocol.RENEW, as_=me, body={"csrPem": own})
    expect(renewed.status == 200, f"{me}'s renewal with its own key answered 200", renewed.line())
    checks: list[tuple[str, str | None, dict[str, Any]]] = [
        (protocol.RENEW, me, {"csrPem": foreign}),
        (protocol.ENROLL, None, {"token": token, "csrPem": foreign}),
    ]
    for path, as_, body in checks:
        reply: Reply = fleet.call("POST", path, as_=as_, body=body)
        expect(
            reply.status == 401,
            f"{path} for {me} with a CSR of {other}'s SSH host key answered 401",
            reply.line(),
        )


def refusals(run: Run) -> Verdict:
    """What the recorded calls were answered: agent routes as another host 403, without
    a certificate 401, a foreign CSR 401 (where enrollment exists)."""
    counts: dict[int, int] = {}
    for e in run.history.of(CALL):
        counts[e.detail["status"]] = counts.get(e.detail["status"], 0) + 1
    ok = counts.get(403, 0) >= 3 and counts.get(401, 0) >= 4
    seen = ", ".join(f"{n}× {status}" for status, n in sorted(counts.items()))
    return Verdict("identity-refusals", ok, f"calls answered {seen}")


def steps(fleet: Fleet) -> None:
    me, other = sorted(fleet.hosts)[:2]
    whoami = fleet.call("GET", protocol.WHOAMI, as_=me)
    expect(whoami.status == 200 and me in str(whoami.json().get("cn")), "whoami to echo my CN")
    body_names_cn(fleet, me, other)
    no_client_cert(fleet, me)
    csr_binds_host_key(fleet, me, other)


SCENARIO = Scenario(
    id="agent-identity-binding",
    source=(
        "004 Surface (machine id = cert CN); `CPT/checkin.rs`, `confirm.rs`, `enroll.rs`, "
        "`renew.rs`, `whoami.rs`"
    ),
    summary="the cert CN names the host: another host in the body 403, no cert 401",
    shape=Shape(hosts=3, local_hosts=2, seed=51),
    steps=steps,
    checks=[refusals],
    mutant="cp-trusts-body-hostname",
    backends=frozenset({"qemu", "sim", "local"}),
)
