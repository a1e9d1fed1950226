"""`dr-verify-revocations-replayed`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="dr-verify-revocations-replayed",
    source="001 Verify 3",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"ssh", "qemu", "local"}),
    waiting={"local": WHY},
)
