"""Seed 001 Verify 3: after the DB wipe the CP replays the signed revocations sidecar.

A host is revoked through CI's signed sidecar (not by hand), the CP applies it, then the
runbook's stop, wipe and start. Within the revocations poll bound of the restart the
CP's journal says `revocations poll: list verified` with `entries` = the sidecar's size,
`cert_revocations` holds exactly those hosts again, and the revoked host's own
certificate is refused (401) on checkin and renew, while the others still pass. The
mutant is the Old CP for which the wipe forgets: it treats the first list after a
start as already applied.
"""

from harness.byhand import checkin_by_hand
from harness.fleet import CHECKIN, CP_START, REVOKE, Fleet, Run, Scenario, Shape, Verdict, expect
from harness.runner import SSH_NOT_PROVEN
from harness.steps import REVOCATIONS_VERIFIED, pick, revocations_verified
from nixfleet.core import protocol

BOUND_POLLS = 1.5
"""Seed 001: the list is verified within 90 s of the restart at a 60 s poll."""


def revoked_rows(fleet: Fleet) -> list[str]:
    return sorted(str(r[0]) for r in fleet.cp.sql("SELECT hostname FROM cert_revocations"))


def refused(fleet: Fleet, host: str) -> None:
    """The host's own certificate: 401 on checkin and on renew."""
    status = checkin_by_hand(fleet, host).status
    expect(status == 401, f"revoked {host}'s checkin refused with 401", status)
    renew = fleet.call("POST", protocol.RENEW, as_=host, body={"csrPem": "-"})
    expect(renew.status == 401, f"revoked {host}'s renew refused with 401", renew.line())


def revoked_stay_out(run: Run) -> Verdict:
    """No checkin of a revoked host's agent got through after the last CP start."""
    revoked = {e.host for e in run.history.of(REVOKE)}
    starts = [e.t for e in run.history.of(CP_START)]
    if not revoked or len(starts) < 2:
        return Verdict("revoked-stay-out", None, "no revocation, or the CP never restarted")
    back = sorted(
        {str(e.host) for e in run.history.of(CHECKIN) if e.host in revoked and e.t >= starts[-1]}
    )
    if back:
        return Verdict("revoked-stay-out", False, f"revoked {back} checked in after the wipe")
    return Verdict("revoked-stay-out", True, f"{sorted(map(str, revoked))} refused throughout")


def steps(fleet: Fleet) -> None:
    revoked = pick(fleet, 0.34, salt="revoked")
    others = [h for h in fleet.hosts if h not in revoked]
    fleet.revoke(revoked, reason="compromised")
    fleet.wait_until(
        lambda: revoked_rows(fleet) == revoked, fleet.polls(3), f"{revoked} revoked before the wipe"
    )
    fleet.cp.stop()
    fleet.cp.wipe()
    fleet.cp.start()
    fleet.wait_until(
        lambda: len(revoked) in revocations_verified(fleet),
        fleet.polls(BOUND_POLLS),
        f"the restarted CP to log '{REVOCATIONS_VERIFIED} entries={len(revoked)}' "
        "(the sidecar replayed)",
    )
    rows = revoked_rows(fleet)
    expect(rows == revoked, f"cert_revocations after the wipe to hold exactly {revoked}", rows)
    for host in revoked:
        refused(fleet, host)
    for host in others:
        status = checkin_by_hand(fleet, host).status
        expect(status == 200, f"{host} (not revoked) to check in with 200", status)


SCENARIO = Scenario(
    id="dr-verify-revocations-replayed",
    source="001 Verify 3",
    summary="revoked by the signed sidecar, DB wiped: the restart replays it; 401 for the host",
    shape=Shape(local_hosts=3, revocations_sidecar=True, seed=13),
    steps=steps,
    checks=[revoked_stay_out],
    mutant="revocations-replay-skipped",
    backends=frozenset({"ssh", "qemu", "local"}),
    waiting={"ssh": SSH_NOT_PROVEN},
)
