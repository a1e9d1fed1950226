"""`agent-rollback-target-path`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="agent-rollback-target-path",
    source="004 (auto-rollback); commit `572a10c`",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"ssh", "qemu", "local"}),
    waiting={"local": WHY},
)
