"""Reference harness scenario `deadline-expiry`: a confirm that comes after its row's
deadline is refused.

A host whose agent is down gets its dispatch through a checkin sent by hand (the
pending row is real, written by the CP's own dispatch), and confirms it only once the
row's deadline has passed: 410, and the row is `rolled-back` (docs/decisions.md "Where
this project is stricter": orphan recovery applies only when no row exists; a row past
its deadline is refused even before the sweep has run). A control host confirming its
own row in time gets 204, so the 410 is about lateness, not about the body. The sweep
itself is `rollback-timer-datetime-compare`'s.
"""

from fleet_sim.checkers import all_converged, rollout_finished
from harness.byhand import (
    HandDispatch,
    confirm_by_hand,
    dispatch_by_hand,
    dispatch_row,
    wait_served,
)
from harness.fleet import Fleet, Scenario, Shape, expect
from harness.steps import wait_settled

LATE_POLLS = 0.01
"""How long after the deadline the late confirm is sent: as soon as it has passed,
so the confirm guard, not the sweep, is what refuses it where the sweep has not run."""


def confirm_late(fleet: Fleet, d: HandDispatch) -> None:
    fleet.sleep(d.window + fleet.polls(LATE_POLLS))
    before = dispatch_row(fleet, d)
    reply = confirm_by_hand(fleet, d)
    expect(
        reply.status == 410 and b"window" in reply.body,
        f"410 'confirm window closed' for {d.host}'s confirm past its row's deadline "
        f"(row {before[0]} was {before[1]!r} just before)",
        reply.line(),
    )
    row = dispatch_row(fleet, d)
    expect(row[1] == "rolled-back", f"{d.host}'s expired row rolled-back", row)


def steps(fleet: Fleet) -> None:
    late, control = fleet.hosts[0], fleet.hosts[1]
    for host in (late, control):
        fleet.kill_agent(host)
    release = fleet.release()
    wait_served(fleet, release)
    in_time = dispatch_by_hand(fleet, control)
    reply = confirm_by_hand(fleet, in_time)
    expect(reply.status == 204, f"204 for {control}'s confirm inside its window", reply.line())
    # Both hosts still run release 0: their agents come back and converge normally.
    fleet.start_agent(control)
    confirm_late(fleet, dispatch_by_hand(fleet, late))
    fleet.start_agent(late)
    wait_settled(fleet, polls=30, then=0.5)


SCENARIO = Scenario(
    id="harness-deadline-expiry",
    source="reference harness scenario harness-deadline-expiry",
    summary="a confirm past its row's deadline gets 410 and the row is rolled-back",
    shape=Shape(hosts=6, local_hosts=2, seed=8),
    steps=steps,
    checks=[all_converged, rollout_finished],
    mutant="late-confirm-accepted",
    backends=frozenset({"qemu", "sim", "local"}),
)
