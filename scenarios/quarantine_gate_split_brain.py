"""`quarantine-gate-split-brain`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="quarantine-gate-split-brain",
    source="commits `0788a67`, `9f26f91`, `5919de6`, `2d5b92e`",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"qemu", "sim", "local"}),
    waiting={"sim": WHY, "local": WHY},
)
