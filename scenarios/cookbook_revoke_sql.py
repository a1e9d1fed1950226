"""Seed 002 "Revoke a host's cert", by the recipe's sqlite3 INSERT.

The operator inserts `(host, datetime('now'), 'compromised', <name>)` into
`cert_revocations` on the CP host. At once (≤5 s) every `/v1/*` call with the host's
older certificate is 401: its checkin, confirm and renew, not 500 (SQLite's
space-separated `not_before` is read as an instant) and not 200 (the canonical CN
`agent-<host>.<suffix>` maps to the short host name the row names). The CP also polls
the signed revocations sidecar; its replay manages only `source='sidecar'` rows, so
the hand-inserted row survives: still 401 after 3 polls. The recipe's way back, a fresh
bootstrap token, enrols a certificate issued after the cut-off, which passes. The
mutant is the reference's hazard: each sidecar poll deletes the rows absent from the
signed list, whoever put them there.
"""

from typing import Any

from fleet_sim.checkers import Run, Verdict
from harness.cpenv import checkin_body, confirm_body
from harness.fleet import CALL, Fleet, Reply, Scenario, Shape, expect
from harness.steps import newest_rollout
from nixfleet.core import protocol

RECIPE = """sqlite3 "$CP_DB" <<SQL
INSERT INTO cert_revocations (hostname, not_before, reason, revoked_by)
VALUES ('{host}', datetime('now'), 'compromised', 'harness');
SQL"""
"""The recipe's command as run on the CP host (its DB path is `$CP_DB` here)."""
POLLS = (
    "journalctl -u nixfleet-control-plane.service --no-pager | grep -c 'revocations poll' || true"
)
"""How many revocation-sidecar polls the CP's journal shows so far."""
AT_ONCE_SECS = 5.0
STILL_AFTER_POLLS = 3


def agent_calls(fleet: Fleet, host: str) -> dict[str, tuple[str, Any]]:
    """A checkin, confirm and renew body for `host` (the gates answer before the body)."""
    closure, rid = fleet.current(host), newest_rollout(fleet)
    assert closure is not None and rid is not None
    return {
        "checkin": (protocol.CHECKIN, checkin_body(host, closure)),
        "confirm": (protocol.CONFIRM, confirm_body(host, rid, closure)),
        "renew": (protocol.RENEW, {"csrPem": fleet.csr(host)}),
    }


def all_refused(fleet: Fleet, host: str, when: str) -> None:
    for name, (path, body) in agent_calls(fleet, host).items():
        reply: Reply = fleet.call("POST", path, as_=host, body=body)
        expect(
            reply.status == 401,
            f"{name} with {host}'s older certificate answered 401 {when}",
            reply.line(),
        )


def revocation_polls(fleet: Fleet) -> int:
    return int(fleet.operator(POLLS).strip() or 0)


def steps(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    path, body = agent_calls(fleet, host)["checkin"]
    before = fleet.call("POST", path, as_=host, body=body)
    expect(before.status == 200, f"{host}'s checkin answered 200 before the revocation")
    fleet.sleep(1.0)  # the row's datetime('now') has whole seconds: past the cert's
    fleet.operator(RECIPE.format(host=host))
    cut = fleet.now()
    polls = revocation_polls(fleet)
    all_refused(fleet, host, "right after the INSERT")
    late = [e.t - cut for e in fleet.history.of(CALL) if e.t >= cut]
    expect(max(late) <= AT_ONCE_SECS, f"the refusals within {AT_ONCE_SECS:g} s", late)
    fleet.wait_until(
        lambda: revocation_polls(fleet) >= polls + STILL_AFTER_POLLS,
        fleet.polls(STILL_AFTER_POLLS + 2),
        f"{STILL_AFTER_POLLS} revocation polls",
    )
    all_refused(fleet, host, f"after {STILL_AFTER_POLLS} revocation polls")
    rows = fleet.cp.sql(f"SELECT source FROM cert_revocations WHERE hostname = '{host}'")
    expect(rows == [("operator",)], "the hand-inserted row to survive the polls", rows)
    reenrolled(fleet, host)


def reenrolled(fleet: Fleet, host: str) -> None:
    """The recipe's way back: a fresh token enrols a cert issued after the cut-off."""
    body = {"token": fleet.mint_token(host), "csrPem": fleet.csr(host)}
    issued = fleet.call("POST", protocol.ENROLL, as_=None, body=body)
    expect(issued.status == 200, f"{host} re-enrolled with a fresh token", issued.line())
    path, checkin = agent_calls(fleet, host)["checkin"]
    fresh = fleet.call("POST", path, as_=host, body=checkin, cert=issued.json()["certPem"])
    expect(
        fresh.status == 200, "a checkin with the cert issued after the cut-off: 200", fresh.line()
    )


def refusals(run: Run) -> Verdict:
    """The recorded agent calls: 401 for the older cert, never 500."""
    seen = [int(e.detail["status"]) for e in run.history.of(CALL) if e.detail["as_"] is not None]
    ok = seen.count(401) == 6 and 500 not in seen
    return Verdict("revoked-calls-401", ok, f"statuses {seen}")


SCENARIO = Scenario(
    id="cookbook-revoke-sql",
    source=(
        '002 "Revoke a host\'s cert"; `CP/src/server/middleware.rs`, `src/db/revocations.rs`, '
        "`src/polling/revocations_poll.rs`"
    ),
    summary="the recipe's INSERT: older cert 401 at once and after 3 polls; a new cert passes",
    shape=Shape(local_hosts=1, revocations_sidecar=True, seed=81),
    steps=steps,
    checks=[refusals],
    mutant="revocation-replay-wipes-hand-inserted",
    backends=frozenset({"qemu", "local"}),
)
