"""Reference harness `harness-stale-target`: a target signed longer ago than its
channel's freshness window (+60 s) is refused by the agent, however willing the CP.

The CP verifies fleet artifacts with its own wide window (30 days here; the
reference's ≈31.7 years), so it takes a release signed 3 h ago and dispatches it. The
release's channel declares `freshnessWindow` 120 min, relayed in every target with
`signedAt`: each real agent refuses the target (3 h > 7200 s + 60 s), reports
`stale-target` with the age and the window, and switches to nothing. The reference
passed on a null target; here the dispatch itself is asserted first.
"""

from harness.byhand import served
from harness.fleet import DISPATCH, Fleet, Scenario, Shape, expect
from harness.refusals import activated, nothing_switched, reports, rollout_of
from nixfleet.core.freshness import CLOCK_SLACK_SECS
from nixfleet.core.wire import STALE_TARGET

WINDOW_MINUTES = 120
AGE_SECS = 3 * 3600


def dispatched(fleet: Fleet, rollout: str) -> set[str]:
    return {str(e.host) for e in fleet.history.of(DISPATCH) if e.detail.get("rollout") == rollout}


def steps(fleet: Fleet) -> None:
    n = fleet.publish(signed_at=-AGE_SECS, freshness_window_minutes=WINDOW_MINUTES)
    rid = rollout_of(fleet, n)
    closures = {h: fleet.target(h) for h in fleet.hosts}
    fleet.wait_until(
        lambda: served(fleet, n), fleet.polls(3), f"the CP to serve release {n} (signed 3 h ago)"
    )
    fleet.wait_until(
        lambda: dispatched(fleet, rid) == set(fleet.hosts),
        fleet.polls(3),
        f"the CP to dispatch release {n}'s target (not null) to every host",
    )
    fleet.wait_until(
        lambda: len(reports(fleet, [STALE_TARGET], rid)) == len(fleet.hosts),
        fleet.polls(3),
        f"every agent to refuse release {n}'s target as {STALE_TARGET} "
        f"(signed {AGE_SECS} s ago, window {WINDOW_MINUTES * 60} s + {CLOCK_SLACK_SECS} s)",
    )
    window = WINDOW_MINUTES * 60
    for host, report in reports(fleet, [STALE_TARGET], rid).items():
        age = int(report.get("age_secs", 0))
        expect(
            report.get("freshness_window_secs") == window and age > window + CLOCK_SLACK_SECS,
            f"{host}'s {STALE_TARGET} report to carry window {window} s and an age over "
            f"{window + CLOCK_SLACK_SECS} s",
            report,
        )
    fleet.sleep(fleet.polls(2))
    switched = activated(fleet, closures)
    expect(not switched, f"no host to switch to the stale release {n}", switched)


SCENARIO = Scenario(
    id="harness-stale-target",
    source="reference harness scenario harness-stale-target",
    summary="CP (30-day window) dispatches a release signed 3 h ago; its channel's 120 min "
    "window makes every agent refuse it (stale-target report), nothing switches",
    shape=Shape(hosts=20, local_hosts=1, seed=13, installed_signed_ago=86400),
    steps=steps,
    checks=[nothing_switched],
    mutant="agent-skips-target-freshness",
    backends=frozenset({"qemu", "sim", "local"}),
)
