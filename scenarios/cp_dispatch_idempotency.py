"""`cp-dispatch-idempotency`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="cp-dispatch-idempotency",
    source="`CPT/dispatch.rs`, `rollout_trace.rs`",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"sim", "local"}),
    waiting={"sim": WHY, "local": WHY},
)
