"""`reconciler-gate-parity`: the checkin path's dispatch gate and the reconciler's gate
read channel edges alike, and a block holds across a CP restart.

Three channels in a chain of channel edges, one host on each predecessor:
`infra` → `canary` → `stable`. A release gives every host a new closure; `infra`'s
switch is slow, so for a few polls its rollout is in flight, `canary` is deferred
(no rollout recorded) and `stable`'s predecessor is missing. Both gates
(docs/lifecycle.md §3.4, one `first_block` in two modes):

- predecessor in flight: both block. `canary` gets no rollout and no dispatch while
  `infra` is in flight, before and after a CP crash and restart;
- predecessor missing: the only difference. The reconciler opens `stable`'s rollout
  (reconcile releases), while no `stable` host is dispatched (dispatch blocks: the
  fleet declares hosts on `canary`, whose rollout is not recorded yet);
- predecessor soaked: both release. `canary` is dispatched within a poll of `infra`'s
  host going Soaked, `stable` within a poll of `canary`'s;
- terminal rollouts: the gates still read them (their successors were released by
  them) while the operator's `/v1/rollouts` no longer lists them.

Soak: `infra`'s rollout converges only after its host soaked its wave's full soak
(Healthy → Soaked → converged); that each step takes its own tick is pinned by the
reconciler's unit tests. Compliance gates (enforce blocks after a signed compliance
failure or runtime-gate error; permissive never blocks) are out of scope: compliance
frameworks come later (docs/decisions.md).

Old (reference `lifecycle_parity.rs`): the checkin path judged channel edges as the
reconciler does, so a predecessor with no recorded rollout (deferred itself, or not
yet opened after a CP restart) counted as converged and its successors were
dispatched before it started.
"""

from __future__ import annotations

from datetime import timedelta

from fleet_sim.checkers import all_converged
from harness.fleet import OPERATOR, ChannelShape, Fleet, Scenario, Shape, expect
from harness.steps import wait_settled
from nixfleet.core.timeutil import parse_instant
from scenarios.channel_edge_successor_release import (
    dispatch_times,
    rollouts_of,
    terminal,
)

FIRST, MIDDLE, LAST = "infra", "canary", "stable"
SWITCH_POLLS = 5.0
"""`infra`'s switch: the window in which `canary` waits and `stable`'s predecessor is
missing (the CP restarts inside it)."""
SOAK_POLLS = 2
"""Each wave's soak on `sim` (0 on `local`, whose soak is whole minutes of 2 s polls)."""
RELEASE_POLLS = 1.25
"""A released successor is dispatched at its host's next checkin (plus the round trip)."""
OPEN_POLLS = 4.0
"""Ample for the CP to fetch the release and tick."""
RELEASED = ("Soaked", "Converged")


def state_of(fleet: Fleet, rollout: str) -> str:
    """`missing` (no rollout recorded), `active` (it holds its successors) or
    `released`, by lifecycle §3.4 for a channel of one host: terminal, or its host's
    participation Soaked/Converged."""
    rows = fleet.cp.sql(f"SELECT terminal_at FROM rollouts WHERE rollout_id = '{rollout}'")
    if not rows:
        return "missing"
    if rows[0][0] is not None:
        return "released"
    parts = fleet.cp.sql(
        f"SELECT host_state FROM host_rollout_state WHERE rollout_id = '{rollout}'"
    )
    return "released" if parts and all(s in RELEASED for (s,) in parts) else "active"


class Watch:
    """Samples the three channels as often as the backend waits; a successor's signs
    (its rollout row, its dispatches) are read before its predecessor's state, which
    only moves forward, so a sign next to a predecessor still holding is a leak."""

    def __init__(self, fleet: Fleet, rollouts: dict[str, str]) -> None:
        self.fleet, self.rollouts = fleet, rollouts
        self.leaks: list[str] = []

    def look(self) -> None:
        fleet, rid = self.fleet, self.rollouts
        last_sent = bool(dispatch_times(fleet, rid[LAST]))
        middle_sent = bool(dispatch_times(fleet, rid[MIDDLE]))
        middle = state_of(fleet, rid[MIDDLE])
        first = state_of(fleet, rid[FIRST])
        at = f"at {fleet.now():.0f} s"
        if (middle != "missing" or middle_sent) and first != "released":
            self.leaks.append(f"{MIDDLE} opened or dispatched {at} with {FIRST} {first}")
        if last_sent and middle != "released":
            self.leaks.append(f"{LAST} dispatched {at} with its predecessor {MIDDLE} {middle}")

    def until(self, channel: str, want: str, polls: float) -> float:
        """Look until `channel`'s rollout is `want`; no leak meanwhile. Returns when."""

        def done() -> bool:
            self.look()
            return state_of(self.fleet, self.rollouts[channel]) == want

        self.fleet.wait_until(done, self.fleet.polls(polls), f"{channel}'s rollout {want}")
        expect(not self.leaks, "each gate to hold a successor while its predecessor holds",
               self.leaks[0] if self.leaks else "")  # fmt: skip
        return self.fleet.now()


def released_within(fleet: Fleet, rollout: str, channel: str, since: float, why: str) -> None:
    what = f"{channel} dispatched within {RELEASE_POLLS:g} polls of {why}"
    limit = since + fleet.polls(RELEASE_POLLS)
    try:
        fleet.wait_until(lambda: bool(dispatch_times(fleet, rollout)), limit - fleet.now(), what)
    except AssertionError:
        expect(False, what, "none")


def missing_predecessor(fleet: Fleet, watch: Watch) -> None:
    """`stable` opened by the reconciler while `canary` is missing; then the CP restarts
    and nothing of it unlocks."""
    rid = watch.rollouts
    watch.until(LAST, "active", OPEN_POLLS)
    expect(
        state_of(fleet, rid[MIDDLE]) == "missing" and state_of(fleet, rid[FIRST]) == "active",
        f"{LAST}'s rollout opened by the reconciler while {MIDDLE} is missing ({FIRST} in "
        "flight): reconcile releases on a missing predecessor",
        {c: state_of(fleet, rid[c]) for c in (FIRST, MIDDLE)},
    )
    # The watch goes on from the first checkin after the start, before any tick.
    fleet.cp.crash()
    fleet.cp.start()


def soak_honoured(fleet: Fleet, rollout: str) -> None:
    """The rollout converged only after every host soaked its wave's soak (declared in
    whole minutes: `Shape.soak_minutes` polls, rounded down)."""
    soak_minutes = int(fleet.shape.soak_minutes * fleet.poll_secs / 60)
    rows = fleet.cp.sql(f"SELECT terminal_at FROM rollouts WHERE rollout_id = '{rollout}'")
    done = parse_instant(str(rows[0][0]))
    for host, since in fleet.cp.sql(
        "SELECT hostname, last_healthy_since FROM host_rollout_state "
        f"WHERE rollout_id = '{rollout}'"
    ):
        soaked = done - parse_instant(str(since))
        expect(
            since is not None and soaked >= timedelta(minutes=soak_minutes),
            f"{host} converged only after its {soak_minutes} min soak (Healthy → Soaked → "
            "converged)",
            f"converged {soaked} after Healthy",
        )


def terminal_hidden(fleet: Fleet, rollouts: dict[str, str]) -> None:
    """Terminal rollouts: recorded terminal (the gates read them) yet not listed."""
    reply = fleet.call("GET", "/v1/rollouts", as_=OPERATOR)
    expect(reply.status == 200, "GET /v1/rollouts as the operator answers 200", reply.line())
    listed = {str(r.get("rolloutId")) for r in reply.json()["rollouts"]}
    for channel in (FIRST, MIDDLE):
        rid = rollouts[channel]
        expect(terminal(fleet, rid), f"{channel}'s rollout recorded terminal")
        expect(rid not in listed, f"{channel}'s terminal rollout hidden from /v1/rollouts")


def steps(fleet: Fleet) -> None:
    fleet.slow_activation(fleet.hosts_of(FIRST), fleet.polls(SWITCH_POLLS))
    rollouts = rollouts_of(fleet, fleet.release())
    watch = Watch(fleet, rollouts)
    missing_predecessor(fleet, watch)
    soaked = watch.until(FIRST, "released", SWITCH_POLLS + SOAK_POLLS + 6)
    released_within(fleet, rollouts[MIDDLE], MIDDLE, soaked, f"{FIRST} soaked")
    released = watch.until(MIDDLE, "released", SOAK_POLLS + 8)
    released_within(fleet, rollouts[LAST], LAST, released, f"{MIDDLE} soaked")
    wait_settled(fleet, then=1)
    soak_honoured(fleet, rollouts[FIRST])
    terminal_hidden(fleet, rollouts)


SCENARIO = Scenario(
    id="reconciler-gate-parity",
    source="`CPT/lifecycle_parity.rs`, `soak_loop.rs`, `wave_gate.rs`",
    summary=(
        "dispatch and reconcile gates agree on a predecessor in flight (block) and "
        "soaked (release), differ only on a missing one; blocks survive a CP restart"
    ),
    shape=Shape(
        hosts=3,
        local_hosts=1,
        waves=1,
        soak_minutes=SOAK_POLLS,
        channels=(
            ChannelShape(name=FIRST, hosts=1, local_hosts=1),
            ChannelShape(name=MIDDLE, hosts=1, local_hosts=1),
        ),
        channel_edges=((FIRST, MIDDLE), (MIDDLE, LAST)),
        seed=22,
    ),
    steps=steps,
    checks=[all_converged],
    mutant="dispatch-gate-reconcile-mode",
)
