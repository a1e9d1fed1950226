"""`compliance-count-dedupe`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "out of scope: decisions.md defers compliance frameworks"

SCENARIO = Scenario(
    id="compliance-count-dedupe",
    source="commit `1c26de0`",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"sim", "local"}),
    waiting={"sim": WHY, "local": WHY},
)
