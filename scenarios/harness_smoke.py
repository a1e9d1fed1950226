"""Reference harness scenario `smoke` (+ fleet-N): every agent gets through mTLS.

The agents boot one after another, 8 s apart at a 60 s poll, onto a fresh release:
each must check in (its client certificate accepted, its routes reached) and then
fetch, switch to and confirm its target, within max(300, 150 + 60·N) s of its boot at
a 60 s poll (scaled by polls on every backend). A property: it guards the mTLS
plumbing (EKU/SAN, routing, boot storms) as a whole.
"""

from fleet_sim.checkers import CLEAN_RUN, Checker, Run, Verdict
from harness.fleet import AGENT_START, CHECKIN, CONFIRM, Fleet, Scenario, Shape
from harness.steps import wait_settled

STAGGER_POLLS = 8 / 60


def bound_polls(hosts: int) -> float:
    """max(300, 150 + 60·N) s at a 60 s poll, in polls."""
    return max(300.0, 150.0 + 60.0 * hosts) / 60.0


def every_agent_through(run: Run) -> Verdict:
    """Each host's first checkin and its confirm (204) after its last agent boot, both
    within the bound."""
    name = "every-agent-through-mtls"
    limit = bound_polls(len(run.final.hosts)) * run.poll_secs
    late: list[str] = []
    worst = 0.0
    for host in run.final.hosts:
        boots = [e.t for e in run.history.of(AGENT_START, host)]
        if not boots:
            late.append(f"{host} never booted")
            continue
        boot = boots[-1]
        checkin = next((e.t for e in run.history.of(CHECKIN, host) if e.t >= boot), None)
        confirm = next(
            (
                e.t
                for e in run.history.of(CONFIRM, host)
                if e.t >= boot and e.detail.get("status") == 204
            ),
            None,
        )
        if checkin is None or confirm is None:
            what = "checked in" if checkin is None else "confirmed"
            late.append(f"{host} never {what}")
            continue
        worst = max(worst, confirm - boot)
        if confirm - boot > limit:
            late.append(f"{host} after {confirm - boot:.0f} s")
    if late:
        return Verdict(name, False, f"{len(late)} agents not through in {limit:g} s: {late[:5]}")
    return Verdict(name, True, f"slowest agent through {worst:.1f} s after its boot")


def steps(fleet: Fleet) -> None:
    for host in fleet.hosts:
        fleet.kill_agent(host)
    fleet.release()
    for host in fleet.hosts:
        fleet.start_agent(host)
        fleet.sleep(fleet.polls(STAGGER_POLLS))
    wait_settled(fleet, polls=bound_polls(len(fleet.hosts)), then=0.5)


CHECKS: list[Checker] = [every_agent_through, *CLEAN_RUN]

SCENARIO = Scenario(
    id="harness-smoke",
    source="reference harness scenario harness-smoke",
    summary="agents booting 8 s apart each check in over mTLS and converge within the bound",
    shape=Shape(hosts=40, local_hosts=3, seed=12),
    steps=steps,
    checks=CHECKS,
    mutant="machine-id-from-raw-cn",
    backends=frozenset({"qemu", "sim", "local"}),
)
