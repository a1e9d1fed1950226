"""`dr-fail-slow-upstream`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="dr-fail-slow-upstream",
    source="001 bullet 3",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"qemu", "sim", "local"}),
    waiting={"sim": WHY, "local": WHY},
)
