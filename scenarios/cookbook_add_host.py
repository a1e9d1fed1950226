"""`cookbook-add-host`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "needs the qemu or ssh backend"

SCENARIO = Scenario(
    id="cookbook-add-host",
    source='002 "Add a host to the fleet"',
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"ssh", "qemu"}),
    waiting={},
)
