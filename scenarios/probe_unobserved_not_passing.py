"""`probe-unobserved-not-passing`: a Healthy host soaks only on probes that have run on
its new system, and in permissive mode a failing probe blocks the soak.

Soak 0, permissive mode, one exec probe per host. Host `a`'s probe gives its first
result on a new system only DELAY polls after the switch (`unknown` until then): it
must not go Soaked before that. Host `b`'s probe fails on the next release: it must
never soak and must be Failed within the CP's health threshold (H11; docs/lifecycle.md
§2.1, §3.6: Soaked needs at least one observed probe, permissive blocks on Fail).
"""

from __future__ import annotations

from collections.abc import Iterable

from harness.fleet import ACTIVATE, Fleet, Scenario, Shape, expect
from harness.steps import newest_rollout, wait_settled

DELAY_POLLS = 4.0
"""How long host `a`'s probe stays `unknown` after its switch."""
THRESHOLD_POLLS = 8.0
"""The CP's H11 threshold: above DELAY_POLLS plus a poll, so `a` is never Failed for
the `unknown` streak itself."""
SOAKED = ("Soaked", "Converged")
FAILED = ("Failed", "Reverted")


def state(fleet: Fleet, rollout: str, host: str) -> str | None:
    rows = fleet.cp.sql(
        "SELECT host_state FROM host_rollout_state "
        f"WHERE rollout_id = '{rollout}' AND hostname = '{host}'"
    )
    return str(rows[0][0]) if rows else None


def switched_at(fleet: Fleet, host: str) -> float:
    return [e.t for e in fleet.history.of(ACTIVATE, host)][-1]


def watch(fleet: Fleet, rollout: str, host: str, until: Iterable[str], polls: float) -> set[str]:
    """Every participation state `host` shows until one in `until` (sampled as often as
    the backend waits)."""
    seen: set[str] = set()
    done = set(until)

    def reached() -> bool:
        s = state(fleet, rollout, host)
        if s is not None:
            seen.add(s)
        return s in done

    fleet.wait_until(reached, fleet.polls(polls), f"{host} to be {'/'.join(sorted(done))}")
    return seen


def unobserved_never_soaks(fleet: Fleet, host: str) -> None:
    fleet.slow_probes([host], fleet.polls(DELAY_POLLS))
    fleet.release()
    rollout = str(newest_rollout(fleet))
    watch(fleet, rollout, host, SOAKED, DELAY_POLLS + 10)
    after = fleet.now() - switched_at(fleet, host)
    expect(
        after >= fleet.polls(DELAY_POLLS),
        f"{host} soaked only after its probe's first result ({DELAY_POLLS:g} polls after "
        "its switch), not while every probe was unknown",
        f"soaked {after / fleet.poll_secs:.1f} polls after its switch",
    )
    fleet.slow_probes([host], 0)
    wait_settled(fleet, then=1)


def failing_blocks_soak(fleet: Fleet, host: str) -> None:
    fleet.release(unhealthy=[host])
    rollout = str(newest_rollout(fleet))
    seen = watch(fleet, rollout, host, FAILED + SOAKED, THRESHOLD_POLLS + 10)
    soaked = seen & set(SOAKED)
    expect(not soaked, f"{host} never soaked on a failing probe (permissive)", sorted(soaked))
    took = fleet.now() - switched_at(fleet, host)
    # The switch, the first checkin from the new system (≤ 1 poll), the threshold,
    # then the next tick.
    bound = fleet.polls(THRESHOLD_POLLS + 2)
    expect(
        took <= bound,
        f"{host} Failed within the health threshold ({THRESHOLD_POLLS:g} polls) of its switch",
        f"after {took / fleet.poll_secs:.1f} polls",
    )


def steps(fleet: Fleet) -> None:
    a, b = fleet.hosts[0], fleet.hosts[-1]
    unobserved_never_soaks(fleet, a)
    failing_blocks_soak(fleet, b)


SCENARIO = Scenario(
    id="probe-unobserved-not-passing",
    source="commit `0788a67`",
    summary=(
        "soak 0, permissive probes: no Soaked before a probe has a result on the new "
        "system; a failing probe blocks the soak and fails the host within the threshold"
    ),
    shape=Shape(
        hosts=4,
        local_hosts=2,
        waves=1,
        policy="rollback-and-halt",
        probe_mode="permissive",
        health_failure_polls=THRESHOLD_POLLS,
        seed=12,
    ),
    steps=steps,
    checks=[],
    mutant="unobserved-probe-passing",
)
