"""Seed 000 "SQLite migration error on CP boot": the DB's migration history names
migration 1 by its v0.1 name, `V1__initial_schema`.

The CP must refuse it by design, with refinery's exact line, before it binds its port;
seed 001's wipe (stop, delete state.db, -wal, -shm, start) is the way out, safe because
what the DB held comes back: the CP is healthy at once and the signed revocations
sidecar is replayed within about a poll. The mutant is a migrator that compares only
version numbers and starts on the foreign history.
"""

from harness.fleet import CpExited, Fleet, Scenario, Shape, expect
from harness.runner import SSH_NOT_PROVEN
from harness.steps import REVOCATIONS_VERIFIED, pick, revocations_verified
from scenarios.dr_verify_revocations_replayed import refused, revoked_rows

MISMATCH = "applied migration V1__initial_schema is different than filesystem one V1__initial"
REFUSAL = f"nixfleet-control-plane: {MISMATCH}"
V01_HISTORY = (
    "sqlite3 state.db \"UPDATE refinery_schema_history SET name = 'initial_schema', "
    "checksum = '0000' WHERE version = 1\""
)
"""The history a v0.1 CP left (its own name and file checksum for migration 1)."""
EXIT_SECS = 10.0
"""Seed 000: the refusal comes at once (an absolute bound: no poll is involved)."""
HEALTHY_POLLS = 0.5
REPLAYED_POLLS = 70 / 60
"""After the wipe: `/healthz` 200 within 30 s, revocations replayed within 70 s, at a
60 s poll."""


def refusal(fleet: Fleet) -> CpExited:
    try:
        fleet.cp.start()
    except CpExited as exc:
        return exc
    expect(False, "the CP to refuse the DB whose history names V1__initial_schema", "it listens")
    raise AssertionError("unreachable")


def steps(fleet: Fleet) -> None:
    revoked = pick(fleet, 0.5, salt="revoked")
    fleet.revoke(revoked)
    fleet.wait_until(lambda: revoked_rows(fleet) == revoked, fleet.polls(3), "the revocation")
    fleet.cp.stop()
    fleet.operator(V01_HISTORY)
    exited = refusal(fleet)
    expect(exited.status != 0, "a non-zero exit", exited.status)
    expect(exited.secs <= EXIT_SECS, f"the exit within {EXIT_SECS:g} s", f"{exited.secs:.1f} s")
    lines = exited.output.splitlines()
    expect(REFUSAL in lines, f"the line {REFUSAL!r}", " | ".join(lines[-3:]))
    expect("control plane listening" not in exited.output, "the port never bound", lines[-3:])
    expect(fleet.call("GET", "/healthz", as_=None).status == 0, "nothing on the CP's port")
    fleet.cp.wipe()
    fleet.cp.start()
    fleet.wait_until(
        lambda: fleet.call("GET", "/healthz", as_=None).status == 200,
        fleet.polls(HEALTHY_POLLS),
        "/healthz 200 after the wipe",
    )
    fleet.wait_until(
        lambda: len(revoked) in revocations_verified(fleet),
        fleet.polls(REPLAYED_POLLS),
        f"'{REVOCATIONS_VERIFIED} entries={len(revoked)}' after the wipe",
    )
    rows = revoked_rows(fleet)
    expect(rows == revoked, f"cert_revocations to hold exactly {revoked} again", rows)
    for host in revoked:
        refused(fleet, host)
    names = fleet.cp.sql("SELECT name FROM refinery_schema_history WHERE version = 1")
    expect(names == [("initial",)], "the new DB's history to name V1__initial", names)


SCENARIO = Scenario(
    id="cp-migration-name-mismatch",
    source='000 "SQLite migration error on CP boot"',
    summary="history names V1__initial_schema: CP exits at once with refinery's line; wipe heals",
    shape=Shape(local_hosts=2, revocations_sidecar=True, seed=17),
    steps=steps,
    checks=[],
    mutant="migration-name-drift",
    backends=frozenset({"ssh", "qemu", "local"}),
    waiting={"ssh": SSH_NOT_PROVEN},
)
