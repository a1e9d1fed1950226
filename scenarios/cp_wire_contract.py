"""The CP's wire contract (reference `CPT/checkin.rs`, `confirm.rs`, `healthz.rs`,
`whoami.rs`): exact status codes that never hide state.

One host, its agent stopped so the scenario alone speaks for it. A checkin from a host
the fleet does not declare gets a null target and the next checkin in 60 s; a report
gets an `evt-…` id; a confirm of the dispatch a checkin got answers 204 and marks the
row confirmed, a confirm matching no row (and no recoverable orphan) 410; `/healthz`
answers 200 over verified TLS (the server cert's SAN names localhost); whoami echoes
the caller's CN. The closure proxy (`closure_proxy.rs`) is out of scope for the first
version (docs: decisions "Scope"), so it is not tested here. The mutant is the
reference's Old: a confirm for an unknown dispatch answered 204.
"""

import json
from typing import Any

from fleet_sim.checkers import Run, Verdict
from harness.byhand import dispatch_rows, wait_served
from harness.cpenv import checkin_body, confirm_body, report_body
from harness.fleet import CALL, OPERATOR, RELEASE, Fleet, Scenario, Shape, expect
from nixfleet.core import protocol

NEXT_CHECKIN_SECS = 60
"""What the CP tells a host with nothing to do (its default agent poll)."""
STRAY = "stray-host"
"""A host name the fleet does not declare (the fleet CA still issues it a cert)."""
UNKNOWN_ROLLOUT = "0" * 64


def undeclared_checkin(fleet: Fleet, host: str) -> None:
    closure = fleet.current(host)
    assert closure is not None
    reply = fleet.call("POST", protocol.CHECKIN, as_=STRAY, body=checkin_body(STRAY, closure))
    expect(reply.status == 200, f"a checkin from undeclared {STRAY} answered 200", reply.line())
    got = reply.json()
    expect(
        got.get("target") is None and got.get("nextCheckinSecs") == NEXT_CHECKIN_SECS,
        f"a null target and the next checkin in {NEXT_CHECKIN_SECS} s",
        reply.line(),
    )


def report_event_id(fleet: Fleet, host: str) -> None:
    body = report_body(host, "rollback-triggered", {"reason": "scenario: wire contract"})
    reply = fleet.call("POST", protocol.REPORT, as_=host, body=body)
    event_id = reply.json().get("eventId") if reply.status == 200 else None
    expect(
        isinstance(event_id, str) and event_id.startswith("evt-"),
        "a report answered 200 with an evt-… id",
        reply.line(),
    )


def dispatch_by_hand(fleet: Fleet, host: str) -> dict[str, Any]:
    """Release, wait for the CP to serve it, check in as `host`: its target."""
    number = fleet.release()
    wait_served(fleet, number)
    closure = fleet.current(host)
    assert closure is not None
    reply = fleet.call("POST", protocol.CHECKIN, as_=host, body=checkin_body(host, closure))
    target = reply.json().get("target") if reply.status == 200 else None
    expect(
        isinstance(target, dict), f"{host}'s checkin on release {number} got a target", reply.line()
    )
    assert isinstance(target, dict)
    rid = list(fleet.history.of(RELEASE))[-1].detail["rollout"]
    expect(target.get("rolloutId") == rid, f"the target of rollout {rid[:12]}", target)
    return target


def row_state(fleet: Fleet, host: str, rollout: str) -> list[str]:
    return [state for _, state in dispatch_rows(fleet, host, rollout)]


def confirms(fleet: Fleet, host: str, target: dict[str, Any]) -> None:
    rid, closure, wave = target["rolloutId"], target["closureHash"], target.get("waveIndex") or 0
    body = confirm_body(host, rid, closure, wave)
    reply = fleet.call("POST", protocol.CONFIRM, as_=host, body=body)
    expect(reply.status == 204, "the confirm of the dispatch answered 204", reply.line())
    states = row_state(fleet, host, rid)
    expect(states == ["confirmed"], f"{host}'s row of rollout {rid[:12]} confirmed", states)
    unknown = confirm_body(host, UNKNOWN_ROLLOUT, closure, wave)
    reply = fleet.call("POST", protocol.CONFIRM, as_=host, body=unknown)
    expect(
        reply.status == 410,
        f"a confirm of rollout {UNKNOWN_ROLLOUT[:12]}…, which no row and no declared "
        "target match, answered 410 (roll back), not success",
        reply.line(),
    )
    expect(row_state(fleet, host, UNKNOWN_ROLLOUT) == [], "no row for the unknown rollout")


def healthz_over_tls(fleet: Fleet) -> None:
    """Seed 001's check, with the CA verified (no -k): the SAN must name localhost."""
    out = fleet.operator(
        'curl -sS --cacert "$CA_CERT" -w "\\n%{http_code}" "https://localhost:$CP_PORT/healthz"'
    )
    body, _, code = out.rpartition("\n")
    expect(code == "200" and json.loads(body).get("ok") is True, "/healthz 200 over TLS", out)


def whoami(fleet: Fleet, host: str) -> None:
    for as_, cn in ((host, f"agent-{host}."), (OPERATOR, "")):
        reply = fleet.call("GET", protocol.WHOAMI, as_=as_)
        got = reply.json().get("cn") if reply.status == 200 else None
        expect(
            isinstance(got, str) and got.startswith(cn) and len(got) > len(cn),
            f"whoami as {as_} to echo its CN",
            reply.line(),
        )


def statuses(run: Run) -> Verdict:
    """Every recorded call, with its answer (the report's record of the contract)."""
    seen = [f"{e.detail['path']}→{e.detail['status']}" for e in run.history.of(CALL)]
    ok = "/v1/agent/confirm→410" in seen and "/v1/agent/confirm→204" in seen
    return Verdict("wire-statuses", ok, ", ".join(seen))


def steps(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    fleet.kill_agent(host)  # the scenario alone speaks for the host
    undeclared_checkin(fleet, host)
    report_event_id(fleet, host)
    target = dispatch_by_hand(fleet, host)
    confirms(fleet, host, target)
    healthz_over_tls(fleet)
    whoami(fleet, host)


SCENARIO = Scenario(
    id="cp-wire-contract",
    source="`CPT/checkin.rs`, `confirm.rs`, `healthz.rs`, `whoami.rs`, `closure_proxy.rs`",
    summary="exact codes: stray checkin null target, report evt-, confirm 204/410, healthz, whoami",
    shape=Shape(local_hosts=1, seed=61),
    steps=steps,
    checks=[statuses],
    mutant="unknown-confirm-accepted",
    backends=frozenset({"local"}),
)
