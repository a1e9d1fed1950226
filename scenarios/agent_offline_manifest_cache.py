"""`agent-offline-manifest-cache`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="agent-offline-manifest-cache",
    source="004 Key types (manifest cache); architecture §5",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"qemu", "sim", "local"}),
    waiting={"sim": WHY, "local": WHY},
)
