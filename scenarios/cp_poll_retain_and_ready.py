"""Reference `CPT/channel_refs_gitops.rs`, `not_ready_gate.rs`, `rebuild_recovery.rs`: the
CP's forge poll takes only what verifies, and a rebuilt DB gets its rollouts back.

A valid release is served (and the CP ready) within one CP poll + 15 s at a 60 s poll.
A release whose signature no trusted key verifies (a byte of it flipped on the forge:
what a wrong key's signature is to the verifier) never replaces the snapshot, also not
through a DB wipe and restart, which primes from the forge first. After the wipe one
tick re-records the served release's rollout; recording it again each tick adds no
row; the next valid release supersedes the old rollout id.
"""

from fleet_sim.checkers import all_converged, rollout_finished
from harness.byhand import served, wait_served
from harness.fleet import RELEASE, SNAPSHOT, Fleet, Scenario, Shape, expect
from harness.steps import wait_settled

SERVED_POLLS = 1.25
"""One CP poll (a 60 s one on sim, 2 s on local) + 15 s at a 60 s poll."""
TICK_POLLS = 0.5
"""The CP's tick: 30 s at a 60 s poll (1 s on local)."""


def rollout_of(fleet: Fleet, release: int) -> str:
    return next(str(e.detail["rollout"]) for e in fleet.history.of(RELEASE)
                if e.detail["release"] == release)  # fmt: skip


def newest_served(fleet: Fleet) -> object:
    snaps = list(fleet.history.of(SNAPSHOT))
    return snaps[-1].detail.get("release") if snaps else None


def rollouts(fleet: Fleet) -> dict[str, str | None]:
    """rollouts table: rollout id → superseded_by."""
    return {str(r): s for r, s in fleet.cp.sql("SELECT rollout_id, superseded_by FROM rollouts")}


def ready(fleet: Fleet) -> bool:
    return fleet.call("GET", "/readyz", as_=None).status == 200


def keeps(fleet: Fleet, good: int, bad: int, when: str) -> None:
    expect(
        not served(fleet, bad) and newest_served(fleet) == good,
        f"{when}: release {good} still served, never the badly signed release {bad}",
        f"newest snapshot: release {newest_served(fleet)}",
    )


def steps(fleet: Fleet) -> None:
    good = fleet.release()
    wait_served(fleet, good, polls=SERVED_POLLS)
    expect(ready(fleet), "the CP ready once a valid release is served")
    bad = fleet.publish(tamper="artifact-signature")
    fleet.sleep(fleet.polls(3))
    keeps(fleet, good, bad, "after 3 CP polls of it")
    expect(ready(fleet), "the CP still ready on its verified snapshot")

    fleet.cp.stop()
    fleet.cp.wipe()
    fleet.cp.start()
    rid = rollout_of(fleet, good)
    fleet.wait_until(
        lambda: rid in rollouts(fleet),
        fleet.polls(TICK_POLLS * 2),
        f"one tick after the wipe to record rollout {rid[:12]}… again",
    )
    keeps(fleet, good, bad, "after the wipe and restart")
    expect(ready(fleet), "the CP ready after the restart")
    before = rollouts(fleet)
    fleet.sleep(fleet.polls(TICK_POLLS * 3))
    expect(rollouts(fleet) == before, "re-recording each tick adds no rollout row",
           f"{before} → {rollouts(fleet)}")  # fmt: skip

    bump = fleet.release()
    wait_served(fleet, bump, polls=SERVED_POLLS)
    new = rollout_of(fleet, bump)
    fleet.wait_until(
        lambda: rollouts(fleet).get(rid) == new,
        fleet.polls(TICK_POLLS * 2),
        f"rollout {rid[:12]}… superseded by {new[:12]}…",
    )
    wait_settled(fleet, polls=30, then=0.5)


SCENARIO = Scenario(
    id="cp-poll-retain-and-ready",
    source="`CPT/channel_refs_gitops.rs`, `not_ready_gate.rs`, `rebuild_recovery.rs`",
    summary="a badly signed release never replaces the snapshot; rollouts re-recorded once",
    shape=Shape(hosts=6, local_hosts=2, seed=10),
    steps=steps,
    checks=[all_converged, rollout_finished],
    mutant="snapshot-signature-unchecked",
)
