"""Seed 004 auto-rollback; reference commit `572a10c`.

A closure that switches fine but fails its health probe afterwards: the CP marks the
host Failed, quarantines the closure and signals a rollback. The rollback must run the
*rolled-back generation's* own `switch-to-configuration` (its store path, read from
the profile after `nix-env --rollback`). The reference ran the one under
`/run/current-system`, still the bad closure, which re-activated itself and exited 0:
no RollbackTriggered, the host stuck on the bad closure.
"""

import contextlib

from fleet_sim.checkers import Run, Verdict
from harness.fleet import Fleet, Scenario, Shape, StepTimeout, expect
from harness.refusals import host_reports
from harness.runner import SSH_NOT_PROVEN


def quarantined(fleet: Fleet, closure: str | None) -> list[str]:
    """The channels that hold `closure` in quarantine."""
    rows = fleet.cp.sql(
        "SELECT channel FROM quarantined_closures "
        f"WHERE closure_hash = '{closure}' AND cleared_at IS NULL"
    )
    return [str(channel) for (channel,) in rows]


def rolled_back(fleet: Fleet, host: str, installed: str | None) -> bool:
    if fleet.current(host) != installed:
        return False
    return bool(host_reports(fleet, host, "rollback-triggered"))


def steps(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    installed = fleet.current(host)
    fleet.release(unhealthy=[host])
    bad = fleet.target(host)
    fleet.wait_until(
        lambda: fleet.current(host) == bad, fleet.polls(10), f"{host} to switch to {bad}"
    )

    def seen() -> str:
        failed = [r.get("details") for r in host_reports(fleet, host, "activation-failed")]
        return f"{host} runs {fleet.current(host)}; activation-failed reports {failed}"

    # A timeout is said by the expectation below, with what the host shows.
    with contextlib.suppress(StepTimeout):
        fleet.wait_until(
            lambda: rolled_back(fleet, host, installed),
            fleet.confirm_window,
            f"{host} rolled back to {installed} with a rollback-triggered report",
        )
    expect(
        rolled_back(fleet, host, installed),
        f"{host} back on {installed} before the deadline, with a rollback-triggered report",
        seen(),
    )
    channels = quarantined(fleet, bad)
    expect(bool(channels), f"a quarantine row for (channel, {bad})", channels)


def never_back_on_bad(run: Run) -> Verdict:
    """The rollback left the bad closure for good: the host ends on its previous one."""
    ends = {n: h.current for n, h in run.final.hosts.items() if h.current == h.target}
    return Verdict(
        "ends-on-previous",
        not ends,
        f"still on the unhealthy closure: {sorted(ends)}" if ends else "every host rolled back",
    )


SCENARIO = Scenario(
    id="agent-rollback-target-path",
    source="004 (auto-rollback); commit `572a10c`",
    summary="a closure failing its probe after the switch: rolled back to the previous one, "
    "RollbackTriggered, quarantined",
    shape=Shape(hosts=1, local_hosts=1, waves=1, seed=8, policy="rollback-and-halt"),
    steps=steps,
    checks=[never_back_on_bad],
    mutant="rollback-via-run-current-system",
    backends=frozenset({"ssh", "qemu", "local"}),
    waiting={"ssh": SSH_NOT_PROVEN},
)
