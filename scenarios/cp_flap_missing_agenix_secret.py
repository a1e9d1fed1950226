"""`cp-flap-missing-agenix-secret`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="cp-flap-missing-agenix-secret",
    source='000 "CP service flaps after deploy"',
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"ssh", "qemu", "local"}),
    waiting={"local": WHY},
)
