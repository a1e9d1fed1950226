"""`harness-stale-target`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="harness-stale-target",
    source="reference harness scenario harness-stale-target",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"qemu", "sim", "local"}),
    waiting={"sim": WHY, "local": WHY},
)
