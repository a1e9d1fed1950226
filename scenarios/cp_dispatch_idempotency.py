"""Reference `CPT/dispatch.rs`, `rollout_trace.rs`: one dispatch row per (host, rollout),
and a converged host's history row written once.

Checkins are sent by hand for two hosts whose agents are down: `stale` still runs
release 0, `converged` reports the declared closure already. A stale host checking in
again while its dispatch is pending gets no new row: null, or (this project, for a host
that lost its target: `nixfleet/core/dispatch.py`) the same target re-offered under the
same rollout id. The converged host's row is born terminal (`converged-at-dispatch`)
and stays the only one through 3 serial and 8 concurrent checkins.
"""

import re

from fleet_sim.checkers import all_converged, rollout_finished
from harness.byhand import (
    at_once,
    checkin_by_hand,
    confirm_by_hand,
    dispatch_by_hand,
    dispatch_row,
    dispatch_rows,
    target_of,
    wait_served,
)
from harness.fleet import Fleet, Reply, Scenario, Shape, expect
from harness.steps import wait_settled
from nixfleet.core import protocol

ROLLOUT_ID = re.compile(r"[0-9a-f]{64}")
SERIAL, CONCURRENT = 3, 8


def stale_host(fleet: Fleet, host: str) -> str:
    """First stale checkin → the declared target; a second one → no second row."""
    d = dispatch_by_hand(fleet, host)
    expect(
        ROLLOUT_ID.fullmatch(d.rollout) is not None and d.channel_ref == d.rollout,
        "rolloutId = channelRef = 64 lowercase hex",
        f"rolloutId {d.rollout}, channelRef {d.channel_ref}",
    )
    again = checkin_by_hand(fleet, host)
    target = target_of(again)
    expect(
        again.status == 200
        and (
            target is None or (target["rolloutId"], target["closureHash"]) == (d.rollout, d.closure)
        ),
        f"a second checkin of {host} while pending: null or the same target",
        again.line(),
    )
    row = dispatch_row(fleet, d)
    expect(row[1] == "pending", f"{host}'s one row pending", row)
    reply = confirm_by_hand(fleet, d)
    expect(reply.status == 204, f"204 for {host}'s confirm", reply.line())
    expect(dispatch_row(fleet, d)[1] == "confirmed", f"{host}'s one row confirmed")
    return d.rollout


def converged_history(fleet: Fleet, host: str, rollout: str) -> str:
    rows = fleet.cp.sql(
        "SELECT state, terminal_state, terminal_at IS NOT NULL FROM pending_confirms "
        f"WHERE hostname = '{host}' AND rollout_id = '{rollout}'"
    )
    return "; ".join(f"{s} {t} stamped={bool(at)}" for s, t, at in rows)


def converged_host(fleet: Fleet, host: str, rollout: str) -> None:
    """H10: one history row, born terminal, however often the host checks in."""
    target = fleet.target(host)
    assert target is not None

    def checkin() -> Reply:
        return checkin_by_hand(fleet, host, closure=target)

    first = checkin()
    expect(target_of(first) is None and first.status == 200, f"no target for {host}", first.line())
    born = "confirmed converged-at-dispatch stamped=True"
    expect(converged_history(fleet, host, rollout) == born, f"{host}: {born}",
           converged_history(fleet, host, rollout))  # fmt: skip
    for _ in range(SERIAL):
        checkin()
    replies = at_once(fleet, [checkin] * CONCURRENT)
    bad = [r.line() for r in replies if r.status != 200 or target_of(r) is not None]
    expect(not bad, f"{CONCURRENT} concurrent checkins of {host}: 200, no target", bad[:2])
    expect(
        converged_history(fleet, host, rollout) == born,
        f"still one history row for {host} after {SERIAL} serial and {CONCURRENT} "
        "concurrent checkins",
        converged_history(fleet, host, rollout),
    )


def steps(fleet: Fleet) -> None:
    stale, converged = fleet.hosts[0], fleet.hosts[1]
    for host in (stale, converged):
        fleet.kill_agent(host)
    release = fleet.release()
    wait_served(fleet, release)
    rollout = stale_host(fleet, stale)
    expect(len(dispatch_rows(fleet, stale, rollout)) == 1, f"one row for {stale}")
    converged_host(fleet, converged, rollout)
    unknown = fleet.call("GET", protocol.ROLLOUT.format(rid="0" * 64), as_=stale)
    expect(unknown.status == 404, "404 for an unknown rollout", unknown.line())
    # Neither host runs the release yet: their agents come back and converge.
    for host in (stale, converged):
        fleet.start_agent(host)
    wait_settled(fleet, polls=30, then=0.5)


SCENARIO = Scenario(
    id="cp-dispatch-idempotency",
    source="`CPT/dispatch.rs`, `rollout_trace.rs`",
    summary="one dispatch row per pending host; a converged host's history row written once",
    shape=Shape(hosts=6, local_hosts=2, seed=9),
    steps=steps,
    checks=[all_converged, rollout_finished],
    mutant="duplicate-dispatch-rows",
)
