"""Seed 001 disaster recovery: stop the CP, delete its database, start it again,
while hosts are between their switch and their confirm."""

from fleet_sim.checkers import DEFAULT, all_converged, checkins_after_restart
from harness.fleet import CONFIRM, Fleet, Scenario, Shape
from harness.steps import in_flight, pick, wait_settled


def readmitted(fleet: Fleet, confirmed: set[str]) -> list[str]:
    """Hosts confirmed before the wipe that the rebuilt DB holds as converged at
    dispatch, not as confirmed: their signed lastConfirmedAt was not taken (H15)."""
    rows = fleet.cp.sql(
        "SELECT hostname FROM pending_confirms WHERE terminal_state = 'converged-at-dispatch'"
    )
    return sorted(confirmed & {str(row[0]) for row in rows})


def steps(fleet: Fleet) -> None:
    fleet.slow_activation(pick(fleet, 0.5, salt="slow"), fleet.polls(1))
    fleet.release()
    enough = max(1, len(fleet.hosts) // 20)
    fleet.wait_until(lambda: in_flight(fleet) >= enough, fleet.polls(20), "switches in flight")
    confirmed = {str(e.host) for e in fleet.history.of(CONFIRM) if e.detail.get("status") == 204}
    fleet.cp.stop()
    fleet.cp.wipe()
    fleet.sleep(fleet.polls(0.25))
    fleet.cp.start()
    wait_settled(fleet, polls=90)
    # Lifecycle §4.6: the hosts that had confirmed come back as confirmed (attested).
    fleet.wait_until(
        lambda: not readmitted(fleet, confirmed),
        fleet.polls(1),
        "hosts confirmed before the wipe to be restored by their attestation, "
        f"not re-admitted as converged-at-dispatch ({len(confirmed)} confirmed)",
    )


SCENARIO = Scenario(
    id="dr-cp-db-wipe-recovery",
    source="seed 001: Disaster recovery - destroying the control plane",
    summary="CP DB wiped mid-rollout: hosts back within 2 polls, in-flight confirms 204, converge",
    shape=Shape(hosts=400, local_hosts=3, waves=3, soak_minutes=2, seed=31),
    steps=steps,
    checks=[*DEFAULT, all_converged, checkins_after_restart(2)],
    mutant="no-orphan-recovery",
    # tpm: the same wipe with every release the CP and agents verify TPM-signed;
    # ssh: with the hosts reached over SSH (the catalogue lists it).
    backends=frozenset({"sim", "local", "tpm", "ssh"}),
)
