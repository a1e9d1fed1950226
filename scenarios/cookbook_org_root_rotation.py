"""`cookbook-org-root-rotation`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="cookbook-org-root-rotation",
    source='002 "Rotate the org root key"',
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"qemu", "local"}),
    waiting={"local": WHY},
)
