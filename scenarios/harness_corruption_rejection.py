"""`harness-corruption-rejection`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="harness-corruption-rejection",
    source="reference harness scenario harness-corruption-rejection",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"sim", "local"}),
    waiting={"sim": WHY, "local": WHY},
)
