"""`dr-verify-channel-fresh`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="dr-verify-channel-fresh",
    source="001 Verify 2",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"ssh", "qemu", "sim", "local"}),
    waiting={"sim": WHY, "local": WHY},
)
