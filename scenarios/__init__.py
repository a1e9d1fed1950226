"""The scenario catalogue: one module per failure mode or property (see
`../shared/design/scenarios.md`); `CATALOGUE` lists them in report order."""

from __future__ import annotations

from harness.fleet import Scenario

from . import (
    clean_rollout,
    cp_stair_step_prime,
    dr_cp_db_wipe_recovery,
    ghost_loop_closure_hash_truncation,
    harness_rollback_policy,
    rollback_timer_datetime_compare,
)

CATALOGUE: list[Scenario] = [
    clean_rollout.SCENARIO,
    rollback_timer_datetime_compare.SCENARIO,
    cp_stair_step_prime.SCENARIO,
    ghost_loop_closure_hash_truncation.SCENARIO,
    dr_cp_db_wipe_recovery.SCENARIO,
    harness_rollback_policy.SCENARIO,
]


def by_id(scenario_id: str) -> Scenario | None:
    return next((s for s in CATALOGUE if s.id == scenario_id), None)
