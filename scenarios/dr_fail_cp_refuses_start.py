"""`dr-fail-cp-refuses-start`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="dr-fail-cp-refuses-start",
    source='001 "When this fails", bullet 1',
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"qemu", "local"}),
    waiting={"local": WHY},
)
