"""Reference harness `harness-future-dated-rejection`: an artifact signed ahead of the
verifier's clock beyond the 60 s slack is refused (pre-signed artifacts from a stolen
key; the remedy is `rejectBefore`).

CI's forge serves a release signed two days ahead: the real CP refuses it at every
forge poll, its line naming future-dating and the 60 s tolerance, and keeps its
snapshot. Releases signed 30 s ago, now and 30 s ahead are each taken as the snapshot
(the installed release is an hour old, so each is newer than the one before), and the
fleet converges on the last, whose manifest the agents accept 30 s ahead of their
clocks.
"""

from fleet_sim.checkers import CLEAN_RUN
from harness.byhand import served
from harness.fleet import Fleet, Scenario, Shape, expect
from harness.refusals import served_signed_at, wait_refused_by_cp
from harness.steps import wait_settled
from nixfleet.core.freshness import CLOCK_SLACK_SECS

TWO_DAYS = 2 * 86400.0
ACCEPTED = (-30.0, 0.0, 30.0)
"""signedAt offsets within the slack (seconds from the verifier's now)."""


def refused_ahead(fleet: Fleet) -> None:
    before = served_signed_at(fleet)
    n = fleet.publish(signed_at=TWO_DAYS)
    line = wait_refused_by_cp(fleet, n, "future-dated", f"release {n} signed 2 days ahead")
    tolerance = f"{CLOCK_SLACK_SECS} s clock-skew tolerance"
    expect(tolerance in line, f"the CP's reason to name the {tolerance}", line)
    expect(served_signed_at(fleet) == before, f"the CP to keep serving signed_at {before}")


def accepted(fleet: Fleet, offset: float) -> None:
    n = fleet.publish(signed_at=offset)
    fleet.wait_until(
        lambda: served(fleet, n),
        fleet.polls(3),
        f"the CP to take release {n} signed {offset:+g} s from now as its snapshot",
    )


def steps(fleet: Fleet) -> None:
    refused_ahead(fleet)
    for offset in ACCEPTED:
        accepted(fleet, offset)
    wait_settled(fleet, polls=30, then=1)


SCENARIO = Scenario(
    id="harness-future-dated-rejection",
    source="reference harness scenario harness-future-dated-rejection",
    summary="signed 2 days ahead: the CP refuses it naming future-dating and the 60 s "
    "tolerance, snapshot kept; −30 s, 0, +30 s: served, the fleet converges",
    shape=Shape(hosts=20, local_hosts=1, seed=12, installed_signed_ago=3600),
    steps=steps,
    checks=CLEAN_RUN,
    mutant="no-future-dating-check",
)
