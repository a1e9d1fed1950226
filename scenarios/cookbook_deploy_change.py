"""`cookbook-deploy-change`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="cookbook-deploy-change",
    source='002 "Deploy a fleet change"',
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"sim", "local", "qemu", "ssh", "tpm"}),
    waiting={"sim": WHY, "local": WHY},
)
