"""Secret hygiene (reference harness scenario; architecture §8.3): the plaintext of a
secret never reaches the CP's state, its journal or its answers.

The secret here is a bootstrap token, the file an agent decrypts at first boot (agenix)
and presents once to `/v1/enroll`: its signature is the bearer credential (the nonce is
meant to be kept, as spent, in `token_replay`). After a deploy's traffic and the token's
enrolment, its replay and a forgery riding its signature, the signature occurs 0 times
in every file of the CP's state dir (state.db, -wal, -shm, the operator journal, the
snapshot cache), in the CP's journal and in every `/v1/*` answer, while the nonce is
found in the DB (the search sees into it). Agent private keys never leave their host
(only CSRs do) and the local fleet decrypts no other fixture; `/etc` is the qemu
backend's. The mutant is the reference's Old: the CP logging the enroll token.
"""

import copy
from typing import Any

from fleet_sim.checkers import CLEAN_RUN
from harness.fleet import OPERATOR, Fleet, Reply, Scenario, Shape, expect
from nixfleet.core import protocol

IN_STATE = "grep -rlaF -- '{s}' \"$CP_STATE_DIR\" || true"
IN_JOURNAL = (
    "journalctl -u nixfleet-control-plane.service --no-pager | grep -cF -- '{s}' || true; "
    "grep -laF -- '{s}' \"$CP_LOG_DIR\"/cp-*.log || true"
)
STATE_FILES = 'ls "$CP_STATE_DIR"'
OPERATOR_READS = ("/v1/hosts", "/v1/rollouts", "/v1/channels/stable", "/v1/whoami")


def enrol_traffic(fleet: Fleet, host: str, token: dict[str, Any]) -> list[Reply]:
    """Enrol with the token, replay it, and send a second token carrying its
    signature: 200, 409, 401."""
    body = {"token": token, "csrPem": fleet.csr(host)}
    forged = copy.deepcopy(fleet.mint_token(host))
    forged["signature"] = token["signature"]
    forged_body = {"token": forged, "csrPem": fleet.csr(host)}
    replies = [
        fleet.call("POST", protocol.ENROLL, as_=None, body=b) for b in (body, body, forged_body)
    ]
    got = [r.status for r in replies]
    expect(got == [200, 409, 401], "enrol 200, its replay 409, the forgery 401", got)
    return replies


def reads(fleet: Fleet, host: str) -> list[Reply]:
    replies = [fleet.call("GET", path, as_=OPERATOR) for path in OPERATOR_READS]
    return [*replies, fleet.call("GET", protocol.WHOAMI, as_=host)]


def steps(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    fleet.release()
    fleet.wait_until(lambda: fleet.converged(), fleet.polls(10), "the fleet to converge")
    token = fleet.mint_token(host)
    secret, nonce = str(token["signature"]), str(token["claims"]["nonce"])
    answers = enrol_traffic(fleet, host, token) + reads(fleet, host)
    fleet.sleep(fleet.polls(2))  # more checkins; the CP's log lines flushed
    files = fleet.operator(STATE_FILES).split()
    expect({"state.db", "state.db-wal"} <= set(files), "the CP's DB and its WAL", files)
    seen = fleet.operator(IN_STATE.format(s=nonce)).split()
    expect(any("state.db" in f for f in seen), "the spent nonce found in the DB", seen)
    leaked = fleet.operator(IN_STATE.format(s=secret)).split()
    expect(not leaked, "the token's signature in no file of the CP's state dir", leaked)
    journal = fleet.operator(IN_JOURNAL.format(s=secret)).split()
    expect(journal == ["0"], "the token's signature 0 times in the CP's journal", journal)
    bodies = [f"{r.status} {r.body[:80]!r}" for r in answers if secret.encode() in r.body]
    expect(not bodies, "the token's signature in no /v1 answer", bodies)


SCENARIO = Scenario(
    id="harness-secret-hygiene",
    source="reference harness scenario harness-secret-hygiene",
    summary="a bootstrap token's signature: 0 times in CP state, journal, /v1 answers",
    shape=Shape(local_hosts=1, seed=91),
    steps=steps,
    checks=CLEAN_RUN,
    mutant="cp-logs-enroll-token",
    backends=frozenset({"qemu", "local"}),
)
