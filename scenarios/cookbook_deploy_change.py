"""Seed 002 "Deploy a fleet change".

CI publishes a release; the CP's channel-refs poll picks it up within one poll ("snapshot
refreshed"), each agent's next checkin gets its dispatch, activates and confirms
("confirm received") before its dispatch's deadline. The recipe verifies the deploy by
grepping the CP's journal for the three markers; a deploy that stalls unseen (the
stair-step, the ghost loop) shows there as markers missing, late or out of order: a
host dispatched again after its confirm never settles. The mutant is the seed's ghost
loop (`report-hash-prefix`).
"""

from collections.abc import Sequence

from fleet_sim.checkers import CLEAN_RUN, Run, Verdict
from harness.fleet import (
    CONFIRM,
    DISPATCH,
    RELEASE,
    SNAPSHOT,
    Fleet,
    NotAvailable,
    Scenario,
    Shape,
    expect,
)
from harness.runner import SSH_NOT_PROVEN, TPM_NOT_PROVEN
from harness.steps import newest_rollout

GREP = (
    "journalctl -u nixfleet-control-plane.service --since '5 minutes ago' --no-pager "
    "| grep -E 'snapshot refreshed|dispatch|confirm received'"
)
"""The recipe's check, verbatim (seed 002), on the CP host."""
SNAPSHOT_POLLS = 1.0
"""The channel-refs poll picks the release up within 60 s: one poll."""
DISPATCH_POLLS = 2.0
"""Dispatch within 60 s + P: the poll that sees the release, then the agent's checkin."""


def markers_in_order(run: Run) -> Verdict:
    """From the release: snapshot ≤ 1 poll, each host's dispatch ≤ 2 polls, then its
    confirm (204); and nothing after it (a re-dispatch is a deploy that never settles)."""
    name = "deploy-markers-in-order"
    release = list(run.history.of(RELEASE))[-1]
    number, rid, t0 = release.detail["release"], release.detail["rollout"], release.t
    snaps = [e.t for e in run.history.of(SNAPSHOT) if e.t >= t0 and e.detail["release"] == number]
    if not snaps:
        return Verdict(name, False, f"release {number} never reached the CP (no snapshot)")
    late = snaps[0] - t0
    if late > SNAPSHOT_POLLS * run.poll_secs:
        return Verdict(name, False, f"snapshot refreshed {late:.1f} s after the release")
    problems = [p for h in sorted(run.final.hosts) if (p := host_markers(run, h, rid, snaps[0]))]
    if problems:
        return Verdict(name, False, f"{len(problems)} hosts: {'; '.join(problems[:3])}")
    return Verdict(
        name, True, f"snapshot after {late:.1f} s, {len(run.final.hosts)} dispatched and confirmed"
    )


def host_markers(run: Run, host: str, rid: str, snapshot_t: float) -> str | None:
    """Why `host`'s dispatch and confirm of `rid` are not one each, in order, in time."""
    seq = [
        (e.t, e.kind, e.detail.get("status"))
        for e in run.history.events
        if e.host == host and e.kind in (DISPATCH, CONFIRM) and e.detail.get("rollout") == rid
    ]
    kinds = [k if k == DISPATCH else f"{k}-{s}" for _t, k, s in seq]
    if not kinds:
        return f"{host} never dispatched rollout {rid[:12]}: the deploy stalled"
    if kinds[:2] != [DISPATCH, f"{CONFIRM}-204"]:
        return f"{host} saw {kinds[:4]}, not a dispatch then its confirm"
    if len(kinds) > 2:
        return f"{host} dispatched again after its confirm ({kinds.count(DISPATCH)} dispatches)"
    dispatched = seq[0][0]
    if dispatched < snapshot_t:
        return f"{host} dispatched before the snapshot refreshed"
    if dispatched - snapshot_t > DISPATCH_POLLS * run.poll_secs:
        return f"{host} dispatched {dispatched - snapshot_t:.1f} s after the snapshot"
    return None


def confirmed_before_deadline(fleet: Fleet, rid: str) -> None:
    """The cookbook's table: each host's newest row of the rollout is confirmed, and at
    or before its deadline (both read as SQLite datetimes, RFC 3339 or not)."""
    rows = fleet.cp.sql(
        "SELECT hostname, state, confirmed_at IS NOT NULL "
        "AND julianday(confirmed_at) <= julianday(confirm_deadline) "
        "FROM pending_confirms p WHERE rollout_id = '" + rid + "' AND id = "
        "(SELECT max(id) FROM pending_confirms q WHERE q.hostname = p.hostname)"
    )
    bad = sorted(
        f"{h} {state}" for h, state, in_time in rows if state != "confirmed" or not in_time
    )
    expect(len(rows) == len(fleet.hosts), "one dispatch row per host", f"{len(rows)} rows")
    expect(not bad, "every host confirmed before its deadline", bad[:3])


def recipe_grep(fleet: Fleet, rid: str) -> None:
    """The recipe's grep on the CP's journal finds all three markers, and each host's
    last dispatch/confirm line is its confirm."""
    try:
        out = fleet.operator(GREP)
    except NotAvailable:
        return  # no CP host to grep on: the history's events judged the same markers
    lines = out.splitlines()
    for marker in ("snapshot refreshed", "dispatch", "confirm received"):
        expect(any(marker in line for line in lines), f"the recipe's grep to find {marker!r}")
    last = {h: last_marker(lines, h, rid) for h in fleet.hosts}
    stuck = sorted(f"{h}: {line}" for h, line in last.items() if "confirm received" not in line)
    expect(not stuck, "each host's last grepped line to be its confirm", stuck[:2])


def last_marker(lines: Sequence[str], host: str, rid: str) -> str:
    mine = [ln for ln in lines if ln.endswith(f"host={host}") and f"rollout={rid}" in ln]
    return mine[-1] if mine else "(no line)"


def steps(fleet: Fleet) -> None:
    number = fleet.release()
    fleet.wait_until(
        lambda: fleet.converged(),
        fleet.polls(10),
        f"every host to run release {number} (the deploy to reach the fleet)",
    )
    fleet.sleep(fleet.polls(3))  # a ghost loop re-dispatches at the next checkins
    rid = newest_rollout(fleet)
    assert rid is not None
    confirmed_before_deadline(fleet, rid)
    recipe_grep(fleet, rid)


SCENARIO = Scenario(
    id="cookbook-deploy-change",
    source='002 "Deploy a fleet change"',
    summary="a release reaches every host: snapshot, dispatch, confirm in order and in time",
    shape=Shape(hosts=20, local_hosts=2, waves=1, seed=41),
    steps=steps,
    checks=[markers_in_order, *CLEAN_RUN],
    mutant="report-hash-prefix",
    backends=frozenset({"sim", "local", "qemu", "ssh", "tpm"}),
    waiting={"tpm": TPM_NOT_PROVEN, "ssh": SSH_NOT_PROVEN},
)
