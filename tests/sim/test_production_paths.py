"""The simulator runs the production paths, not copies (issue 10 item 1).

A bug put back into the CP's start-up module (`nixfleet.cp.lifecycle`) or into the
checkin path (the identity check, the H15 attestation check, the wire parser) makes a
catalogue scenario fail on `sim`, for the reason the scenario states. The mutants are
`harness.mutants`'s, so `fleet-harness prove` and the local backend use the same ones.
"""

from __future__ import annotations

import pytest

import scenarios
from fleet_sim.world import SimConfig, World
from harness import runner

pytestmark = pytest.mark.slow

CASES = [
    # Seed 000 stair-step, both halves: the prime order, the snapshot rule.
    ("cp-stair-step-prime", "prime-from-build-time", "snapshot-monotonic"),
    ("cp-stair-step-prime", "snapshot-replaced-by-older", "snapshot-monotonic"),
    # The checkin path: identity, attestation (H15 after the seed-001 wipe), wire parse.
    ("clean-rollout", "machine-id-from-raw-cn", "rollout-finished"),
    ("dr-cp-db-wipe-recovery", "attestation-rejected", "steps"),
    ("harness-rollback-policy", "checkin-parse-drops-probes", "rollout-halted"),
]


@pytest.mark.parametrize(("sid", "mutant", "verdict"), CASES)
def test_a_bug_in_a_production_path_fails_a_sim_scenario(
    sid: str, mutant: str, verdict: str
) -> None:
    scenario = scenarios.by_id(sid)
    assert scenario is not None
    outcome = runner.run(scenario, "sim", mutant=mutant)
    failed = {v.name: v.detail for v in outcome.verdicts if v.ok is False}
    assert verdict in failed, outcome.verdicts


def test_the_stair_step_run_restarts_the_cp_and_serves_every_release() -> None:
    scenario = scenarios.by_id("cp-stair-step-prime")
    assert scenario is not None
    outcome = runner.run(scenario, "sim")
    assert outcome.passed, outcome.verdicts
    starts = [line for line in outcome.history if " cp-start " in f" {line} "]
    assert len(starts) == 4, starts  # the first start and one restart per release


def test_a_revoked_certificate_is_refused_by_the_cps_own_check() -> None:
    """The simulated host presents its certificate (`agent-<host>.fleet.sim`, issued a
    day before the run); an operator revocation after that instant refuses it (401)."""
    world = World(SimConfig(hosts=3, waves=1, seed=2))
    world.boot()
    world.env.run(until=2 * world.poll_secs)
    store = world.cp.store
    assert store is not None
    store.revoke("host-2", world.clock.now(), now=world.clock.now(), reason="stolen")
    revoked_at = world.env.now
    world.env.run(until=revoked_at + 3 * world.poll_secs)
    after = [e for e in world.history.events if e.t > revoked_at]
    refused = [e for e in after if e.kind == "checkin-failed" and e.host == "host-2"]
    assert refused and all("revoked" in str(e.detail["reason"]) for e in refused), refused
    assert not [e for e in after if e.kind == "checkin" and e.host == "host-2"]
    assert {e.host for e in after if e.kind == "checkin"} == {"host-1", "host-3"}
