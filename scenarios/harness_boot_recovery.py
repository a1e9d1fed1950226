"""Boot recovery (lifecycle §5.8; reference `boot_recovery_integration.rs`).

At start-up, before its first checkin, the agent reads its dispatch record: none ⇒
nothing to confirm; the running system is not the recorded closure ⇒ the record is
stale, dropped, never confirmed; it is ⇒ confirm it (204 ⇒ record cleared).

Two hosts have their agents killed mid-rollout:
- `stale`: killed while its (slow, failing) switch runs: the switch never lands, the
  record names a closure the host does not run. Restarted, the record is dropped at
  once, no confirm is POSTed for it, and it checks in within 3 polls.
- `resumed`: switched while cut off from the CP, so its confirm never arrived; killed,
  restarted once the link is back: boot recovery confirms, 204, the record is cleared.

Not shown here (unit-tested in tests/core/test_agent.py): a 410 whose rollback fails
keeps the record; it needs a host whose profile has no older generation.
"""

from collections.abc import Mapping

from harness.fleet import ACTIVATE, CHECKIN, CONFIRM, Fleet, Scenario, Shape, expect


def since(fleet: Fleet, kind: str, host: str, t: float) -> list[dict[str, object]]:
    return [e.detail for e in fleet.history.of(kind, host) if e.t >= t]


def kill_mid_rollout(fleet: Fleet, stale: str, resumed: str) -> float:
    """Release; `stale` killed mid-switch, `resumed` switched while cut off, then
    killed. Returns when the cut heals."""
    fleet.slow_activation([stale], fleet.polls(2))
    fleet.slow_activation([resumed], fleet.polls(1))
    fleet.release(failing=[stale])
    fleet.wait_until(
        lambda: all(fleet.history.count(ACTIVATE, h) for h in (stale, resumed)),
        fleet.polls(5),
        f"{stale} and {resumed} to start their switches",
    )
    fleet.kill_agent(stale)
    cut = fleet.polls(3)
    healed_at = fleet.now() + cut
    fleet.partition([resumed], cut)  # its confirm after the switch goes nowhere
    fleet.wait_until(
        lambda: fleet.current(resumed) == fleet.target(resumed),
        fleet.polls(2),
        f"{resumed}'s switch to land while it is cut off",
    )
    fleet.kill_agent(resumed)
    return healed_at


def steps(fleet: Fleet) -> None:
    stale, resumed = fleet.hosts[0], fleet.hosts[1]
    healed_at = kill_mid_rollout(fleet, stale, resumed)
    record: Mapping[str, str] | None = fleet.dispatch_record(stale)
    expect(
        record is not None and record["closure"] == fleet.target(stale) != fleet.current(stale),
        f"{stale}'s dispatch record to name the closure its dead switch never ran",
        f"record {record}, running {fleet.current(stale)}",
    )
    fleet.sleep(max(0.0, healed_at - fleet.now()) + fleet.polls(0.1))
    restart = fleet.now()
    fleet.start_agent(stale)
    fleet.start_agent(resumed)
    fleet.wait_until(
        lambda: fleet.dispatch_record(stale) != record,
        fleet.polls(3),
        f"{stale}'s stale dispatch record (for {fleet.target(stale)}) to be dropped at boot",
    )
    fleet.wait_until(
        lambda: bool(since(fleet, CHECKIN, stale, restart)),
        fleet.polls(3),
        f"{stale} to check in within 3 polls of its restart",
    )
    fleet.wait_until(
        lambda: (
            any(c.get("status") == 204 for c in since(fleet, CONFIRM, resumed, restart))
            and fleet.dispatch_record(resumed) is None
        ),
        fleet.polls(3),
        f"{resumed}'s boot recovery to confirm (204) and clear its record",
    )
    confirms = [c.get("status") for c in since(fleet, CONFIRM, stale, restart)]
    expect(not confirms, f"no confirm POSTed by {stale} for its stale record", confirms)


SCENARIO = Scenario(
    id="harness-boot-recovery",
    source="also `crates/nixfleet-agent/tests/boot_recovery_integration.rs`",
    summary="agents killed mid-rollout: a stale record is dropped unconfirmed, a landed "
    "switch is confirmed at boot",
    shape=Shape(hosts=6, local_hosts=2, waves=1, seed=12),
    steps=steps,
    checks=[],
    mutant="stale-record-reconfirmed",
)
