"""Seed 001 Verify 4: after the DR wipe and restart, every declared host checks in
again, within 2 polls of the CP's start (≤120 s at a 60 s poll).

Judged on the recorded checkins and, where the CP has a host, also as the runbook does
it: the hostnames of the CP journal's `checkin received` lines since the restart,
`awk '{print $NF}'` (the line ends with the bare hostname, docs/decisions.md). The
mutant is an agent that gives up after a checkin the stopped CP refused; so that one
surely meets the stopped CP, the CP stays down until an agent's checkin has failed.

An agent refused twice in a row has doubled its backoff (lifecycle §5.1: poll ×
2^(failures−1), ±20 % jitter). That happens only when the CP is away for 0.8 poll or
more, which a real process restart is against the local 2 s poll (never against a
60 s one); such a host is owed its backoff from its last refusal instead.
"""

from harness.fleet import (
    CHECKIN,
    CHECKIN_FAILED,
    CP_START,
    Fleet,
    NotAvailable,
    Scenario,
    Shape,
    expect,
)
from harness.runner import SSH_NOT_PROVEN
from harness.steps import holds_within
from nixfleet.core.agent import MAX_BACKOFF_EXPONENT

BACK_POLLS = 2.0
"""≤120 s at a 60 s poll: one poll, plus the CP's restart and prime."""
JITTER = 1.2
"""The agents' backoff jitter bound (lifecycle §5.1: ±20 %)."""
WAIT_POLLS = 6.0
"""How long to wait for stragglers before judging (past any owed backoff here)."""
JOURNAL = (
    "journalctl -u nixfleet-control-plane.service --since='@{since:.3f}' "
    "| grep 'checkin received' | awk '{{print $NF}}' | sort -u"
)
"""Seed 001's check, from the restart on instead of '5 min ago' (which would count
the checkins the old CP received before the wipe)."""


def refused_since(fleet: Fleet, since: float) -> list[tuple[str, float]]:
    return [(str(e.host), e.t) for e in fleet.history.of(CHECKIN_FAILED) if e.t >= since]


def restart_after_a_refusal(fleet: Fleet) -> tuple[float, float]:
    """Seed 001's stop, wipe and start, the CP down until an agent's checkin failed.
    Returns the fleet times the CP was stopped and started."""
    stopped = fleet.now()
    fleet.cp.stop()
    fleet.cp.wipe()
    fleet.wait_until(
        lambda: bool(refused_since(fleet, stopped)),
        fleet.polls(2),
        "an agent's checkin to fail while the CP is down",
    )
    restarted = fleet.now()
    fleet.cp.start()
    return stopped, restarted


def back_at(fleet: Fleet, start: float) -> dict[str, float]:
    """Each host's first checkin at or after `start`."""
    first: dict[str, float] = {}
    for e in fleet.history.of(CHECKIN):
        if e.t >= start and e.host is not None:
            first.setdefault(e.host, e.t)
    return first


def owed(fleet: Fleet, host: str, stopped: float, start: float) -> float:
    """When `host` must be back: 2 polls after the CP's start, or, refused k ≥ 2 times
    in a row, its backoff from its last refusal, whichever is later."""
    refusals = [t for h, t in refused_since(fleet, stopped) if h == host and t < start]
    bound = start + fleet.polls(BACK_POLLS)
    if len(refusals) < 2:
        return bound
    exponent = min(len(refusals) - 1, MAX_BACKOFF_EXPONENT)
    return max(bound, refusals[-1] + fleet.polls(JITTER * 2**exponent))


def journal_hosts(fleet: Fleet, since: float) -> set[str] | None:
    """The runbook's hostnames from the CP journal since fleet time `since` (None: no
    shell on the CP host)."""
    try:
        clock = float(fleet.operator("date +%s.%N"))  # the CP host's clock, now
    except NotAvailable:
        return None
    out = fleet.operator(JOURNAL.format(since=clock - (fleet.now() - since)))
    return set(out.split())


def steps(fleet: Fleet) -> None:
    stopped, restarted = restart_after_a_refusal(fleet)
    start = [e.t for e in fleet.history.of(CP_START)][-1]
    declared = set(fleet.hosts)
    holds_within(fleet, lambda: set(back_at(fleet, start)) >= declared, fleet.polls(WAIT_POLLS))
    first = back_at(fleet, start)
    missing = sorted(declared - set(first))
    late = sorted(
        f"{h} +{t - start:.1f}s" for h, t in first.items() if t > owed(fleet, h, stopped, start)
    )
    expect(
        not missing and not late,
        f"every declared host ({len(declared)}) to check in again within {BACK_POLLS:g} "
        "polls of the CP's restart (or the backoff it owed)",
        f"{len(missing)} never did {missing[:5]}, {len(late)} late {late[:5]}",
    )
    seen = journal_hosts(fleet, restarted)
    if seen is not None:
        expect(
            seen == declared,
            "the runbook's journal check (checkin received | awk '{print $NF}') to list "
            "exactly the declared hosts",
            sorted(seen ^ declared),
        )


SCENARIO = Scenario(
    id="dr-verify-all-agents",
    source="001 Verify 4",
    summary="after the DR wipe: every declared host checks in again within 2 polls",
    shape=Shape(hosts=40, local_hosts=3, seed=14),
    steps=steps,
    checks=[],
    mutant="agent-gives-up-after-refusal",
    backends=frozenset({"ssh", "qemu", "sim", "local"}),
    waiting={"ssh": SSH_NOT_PROVEN},
)
