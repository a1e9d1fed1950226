"""`harness-module-rollouts-wire`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="harness-module-rollouts-wire",
    source="reference harness scenario harness-module-rollouts-wire",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"qemu", "local"}),
    waiting={"local": WHY},
)
