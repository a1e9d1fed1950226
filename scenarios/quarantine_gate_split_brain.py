"""`quarantine-gate-split-brain`: a closure that failed its probes stays quarantined on
the checkin path too, not only in the reconciler.

Under `rollback-and-halt`, host `h` switches to closure X, fails its probes for the
CP's health threshold (H11: Failed, X quarantined on the channel, its open dispatch
rows cancelled), is told to roll back and does. The next release keeps X for `h`
(CI rebuilt nothing for it) while every rollout id changes: in the new rollout `h`
has no participation row, so only the quarantine gate, reading the *declared*
closure, stands between `h` and X again. The reference's split brain: the reconciler
skipped the quarantined closure but checkins served it (dispatch → probe fail →
rollback → the same closure a poll later). A fix pushed as a new closure Y must go
out at once (docs/lifecycle.md §2.1 H11, §3.4).
"""

from __future__ import annotations

from fleet_sim.checkers import Run, Verdict
from harness.byhand import dispatch_rows, wait_served
from harness.cpenv import confirm_body
from harness.fleet import (
    CHECKIN,
    DISPATCH,
    RELEASE,
    ROLLBACK,
    SNAPSHOT,
    Event,
    Fleet,
    Scenario,
    Shape,
    expect,
)
from harness.steps import pick, wait_settled

CLOSED = ("rolled-back", "cancelled")
"""The states of a dispatch row that is over without a confirm."""
QUIET_POLLS = 5
"""After the rollback no checkin answer may carry X for this many polls."""
FIX_POLLS = 1.25
"""Y is dispatched within one poll of the CP serving it (plus the checkin's round trip)."""


def served_at(fleet: Fleet, release: int) -> float | None:
    """When the CP first served `release` (its `snapshot` event)."""
    return next(
        (e.t for e in fleet.history.of(SNAPSHOT) if e.detail.get("release") == release), None
    )


def dispatches(fleet: Fleet, host: str, closure: str) -> list[Event]:
    return [e for e in fleet.history.of(DISPATCH, host) if e.detail.get("closure") == closure]


def quarantined(fleet: Fleet, closure: str) -> bool:
    rows = fleet.cp.sql(
        "SELECT 1 FROM quarantined_closures "
        f"WHERE closure_hash = '{closure}' AND cleared_at IS NULL"
    )
    return bool(rows)


def roll_back_x(fleet: Fleet, host: str) -> tuple[str, str]:
    """Release X with `host` unhealthy; wait for its rollback. Returns (X, rollout)."""
    fleet.release(unhealthy=[host])
    bad = str(fleet.target(host))
    rollout = str(list(fleet.history.of(RELEASE))[-1].detail["rollout"])
    # Both sides: the agent rolled back, the CP quarantined X (H11) and closed its
    # dispatch row. The agent's rollback report reaches the CP after its log line; a
    # confirm sent before the row is closed still matches it and is rightly accepted.
    fleet.wait_until(
        lambda: any(True for _ in fleet.history.of(ROLLBACK, host))
        and quarantined(fleet, bad)
        and all(state in CLOSED for _id, state in dispatch_rows(fleet, host, rollout)),
        fleet.polls(40),
        f"{host} to roll back {bad}, the CP to quarantine it and close its row",
    )
    # Its dispatch of X is over: a confirm of X now is refused (410 ⇒ roll back).
    reply = fleet.call("POST", "/v1/agent/confirm", as_=host, body=confirm_body(host, rollout, bad))
    expect(reply.status == 410, f"a confirm of quarantined {bad} answered 410", reply.line())
    return bad, rollout


def keep_x_quiet(fleet: Fleet, host: str, bad: str) -> None:
    """A release keeping X for `host`: for QUIET_POLLS polls after the CP serves it,
    `host` checks in and is never handed X."""
    number = fleet.release(keep=[host], unhealthy=[host])
    expect(fleet.target(host) == bad, f"release {number} keeps {bad} for {host}")
    wait_served(fleet, number)
    start = fleet.now()
    fleet.sleep(fleet.polls(QUIET_POLLS))
    again = [e for e in dispatches(fleet, host, bad) if e.t >= start]
    expect(
        not again,
        f"no checkin answer carries quarantined {bad} to {host} for {QUIET_POLLS} polls",
        f"dispatched again at {[round(e.t, 1) for e in again]} s",
    )
    polled = [e for e in fleet.history.of(CHECKIN, host) if e.t >= start]
    expect(len(polled) >= QUIET_POLLS - 1, f"{host} kept checking in", f"{len(polled)} checkins")


def push_fix(fleet: Fleet, host: str) -> None:
    """A new closure Y for `host`: dispatched within one poll of being served."""
    number = fleet.release()
    fix = str(fleet.target(host))
    fleet.wait_until(
        lambda: bool(dispatches(fleet, host, fix)), fleet.polls(6), f"{host} to get fix {fix}"
    )
    served = served_at(fleet, number)
    first = dispatches(fleet, host, fix)[0].t
    expect(
        served is not None and first - served <= fleet.polls(FIX_POLLS),
        f"the fix dispatched to {host} within one poll of being served",
        f"served at {served}, dispatched at {first:.1f} s",
    )
    wait_settled(fleet, then=2)


def steps(fleet: Fleet) -> None:
    (host,) = pick(fleet, 1 / len(fleet.hosts), salt="quarantine")
    bad, _rollout = roll_back_x(fleet, host)
    keep_x_quiet(fleet, host, bad)
    push_fix(fleet, host)


def x_dispatched_once(run: Run) -> Verdict:
    """Each host got each closure at most once (a quarantined one never twice)."""
    seen: dict[tuple[str, str], int] = {}
    for e in run.history.of(DISPATCH):
        key = (str(e.host), str(e.detail.get("closure")))
        seen[key] = seen.get(key, 0) + 1
    twice = sorted(f"{h}:{c.rsplit('-', 1)[-1]}" for (h, c), n in seen.items() if n > 1)
    return Verdict("closure-dispatched-once", not twice, f"dispatched twice: {twice}")


def fix_converged(run: Run) -> Verdict:
    missing = sorted(set(run.final.hosts) - run.final.converged())
    return Verdict("fix-converged", not missing, f"not on the fix: {missing[:5]}")


SCENARIO = Scenario(
    id="quarantine-gate-split-brain",
    source="commits `0788a67`, `9f26f91`, `5919de6`, `2d5b92e`",
    summary=(
        "a closure rolled back after failing its probes is never dispatched again, "
        "not even by the next rollout; a new closure goes out within a poll"
    ),
    shape=Shape(hosts=10, local_hosts=2, waves=1, policy="rollback-and-halt", seed=11),
    steps=steps,
    checks=[x_dispatched_once, fix_converged],
    mutant="quarantine-gate-reads-reported",
    backends=frozenset({"qemu", "sim", "local"}),
    waiting={"qemu": "the QEMU backend (QEMU issue)"},
)
