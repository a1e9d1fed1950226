"""Seed 002 "Diagnose a stuck agent", the CP half.

The recipe's query reads `pending_confirms` (docs: decisions, "Dispatch table"): it must
run unchanged on a fresh DB. `nixfleet diagnose HOST` prints the same rows and names the
patterns the recipe says to look for. A host that deployed cleanly shows none; rows put
in as each pattern leaves them are named: the same target dispatched twice (the ghost
loop), a row overdue on a running CP (its sweep rolls it back: rolled back before
activation finished), a row overdue while the CP is down (pending past the deadline).
The mutant is the seed-000 rollback timer (`sweep-raw-text-compare`): the running CP
never expires the overdue row, and the diagnosis names that instead.

The host half of the recipe (`Fleet.diagnose_host`: the agent unit's state, its last 50
log lines, the current-system link; over SSH with testinfra on `ssh`, off the host's
files on `local`): the deployed host shows its agent active, checking in, on the
declared closure; with its agent killed it shows it inactive, the log still readable.
"""

from fleet_sim.checkers import CLEAN_RUN
from harness.fleet import Fleet, HostDiagnosis, Scenario, Shape, expect

RECIPE = (
    'sqlite3 "$CP_DB" \'SELECT id, rollout_id, state, datetime(dispatched_at), '
    'datetime(confirmed_at) FROM pending_confirms WHERE hostname = "{host}" '
    "ORDER BY id DESC LIMIT 5;'"
)
"""The recipe's query as it runs on the CP host (its DB path is `$CP_DB` here)."""
DIAGNOSE = 'nixfleet diagnose {host} --db-path "$CP_DB"'
FAKE_ROLLOUT = "d" * 64
"""The injected rows' rollout: none the fleet runs, so the real rollout stays clean."""
ROW = (
    "INSERT INTO pending_confirms (hostname, rollout_id, target_closure_hash, "
    "target_channel_ref, state, dispatched_at, confirm_deadline, confirmed_at) VALUES "
    "('{host}', '{rid}', '{closure}', '{rid}', '{state}', {at}, {deadline}, {confirmed});"
)


def rfc3339(offset: str) -> str:
    """SQL for now + `offset` as the CP writes instants (RFC 3339 UTC)."""
    return f"strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '{offset}')"


def inject(fleet: Fleet, host: str, closure: str, state: str, **when: str) -> None:
    sql = ROW.format(
        host=host,
        rid=FAKE_ROLLOUT,
        closure=closure,
        state=state,
        at=rfc3339(when.get("at", "-10 minutes")),
        deadline=rfc3339(when.get("deadline", "+5 minutes")),
        confirmed=rfc3339(when["confirmed"]) if "confirmed" in when else "NULL",
    )
    fleet.operator(f'sqlite3 "$CP_DB" "{sql}"')


def diagnose(fleet: Fleet, host: str) -> str:
    return fleet.operator(DIAGNOSE.format(host=host))


def expect_pattern(fleet: Fleet, host: str, pattern: str, why: str) -> None:
    out = diagnose(fleet, host)
    expect(f"{host}: {pattern}:" in out, f"{host} diagnosed {pattern} ({why})", out.strip())


def recipe_on_fresh_db(fleet: Fleet, host: str) -> None:
    out = fleet.operator(RECIPE.format(host=host))  # "no such table" would exit non-zero
    expect(out.strip() != "", f"the recipe's query to list {host}'s dispatch rows", out)


def clean_deploy(fleet: Fleet, host: str) -> str:
    """Release, converge, a few polls more: the host shows no stuck pattern."""
    fleet.release()
    fleet.wait_until(lambda: fleet.converged(), fleet.polls(10), "the fleet to converge")
    fleet.sleep(fleet.polls(2))
    out = diagnose(fleet, host)
    expect(f"{host}: no stuck pattern" in out, f"{host}, deployed cleanly, diagnosed healthy", out)
    closure = fleet.current(host)
    assert closure is not None
    return closure


def swept_on_a_running_cp(fleet: Fleet, host: str, closure: str) -> None:
    """An overdue pending row on a running CP: within 2 polls its sweep rolls it back."""
    inject(fleet, host, closure, "pending", deadline="-4 minutes")
    until = fleet.now() + fleet.polls(2)
    out = diagnose(fleet, host)
    while "pending-past-deadline" in out and fleet.now() < until:
        fleet.sleep(fleet.poll_secs / 4)
        out = diagnose(fleet, host)
    expect(
        f"{host}: rolled-back-before-activation:" in out,
        f"{host}'s row, overdue on a running CP, rolled back by its sweep within 2 polls and "
        "diagnosed rolled-back-before-activation",
        out.strip(),
    )


def host_half(fleet: Fleet, host: str, closure: str) -> None:
    """The recipe's ssh commands on the deployed host, then with its agent down."""
    seen = fleet.diagnose_host(host)
    expect(
        seen.agent == "active" and seen.current == closure,
        f"{host}'s agent active on the declared closure {closure}",
        _line(seen),
    )
    expect(
        0 < len(seen.log_tail) <= 50 and any("checkin ok" in ln for ln in seen.log_tail),
        f"{host}'s last (at most 50) agent log lines to show its checkins",
        _line(seen),
    )
    fleet.kill_agent(host)
    down = fleet.diagnose_host(host)
    expect(
        down.agent != "active" and down.current == closure and down.log_tail != (),
        f"{host} with its agent killed: not active, still on {closure}, its log readable",
        _line(down),
    )
    fleet.start_agent(host)
    fleet.wait_until(
        lambda: fleet.diagnose_host(host).agent == "active",
        fleet.polls(3),
        f"{host}'s agent active again",
    )


def _line(d: HostDiagnosis) -> str:
    last = d.log_tail[-1] if d.log_tail else "-"
    return f"{d.source}: agent {d.agent}, current {d.current}, last log line {last!r}"


def steps(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    recipe_on_fresh_db(fleet, host)
    closure = clean_deploy(fleet, host)
    host_half(fleet, host, closure)
    # The ghost loop's trace: the same target dispatched again after its confirm.
    inject(fleet, "stuck-loop", closure, "confirmed", confirmed="-9 minutes")
    inject(fleet, "stuck-loop", closure, "pending", at="-1 minutes")
    expect_pattern(fleet, "stuck-loop", "repeated-dispatch", "the same target twice")
    swept_on_a_running_cp(fleet, "stuck-slow", closure)
    # With the CP down nothing sweeps: an overdue row stays pending.
    fleet.cp.stop()
    inject(fleet, "stuck-late", closure, "pending", deadline="-10 minutes")
    expect_pattern(fleet, "stuck-late", "pending-past-deadline", "overdue, nothing sweeping")
    recipe_out = fleet.operator(RECIPE.format(host="stuck-loop"))
    expect(len(recipe_out.splitlines()) == 2, "the recipe's query to show both dispatches")
    fleet.cp.start()


SCENARIO = Scenario(
    id="cookbook-stuck-agent-diagnose",
    source='002 "Diagnose a stuck agent"',
    summary="the recipe's query runs; nixfleet diagnose names each stuck pattern",
    shape=Shape(local_hosts=1, seed=71),
    steps=steps,
    checks=CLEAN_RUN,
    mutant="sweep-raw-text-compare",
    backends=frozenset({"ssh", "qemu", "local"}),
)
