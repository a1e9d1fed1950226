"""`agent-self-switch-survives`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "needs the qemu or ssh backend"

SCENARIO = Scenario(
    id="agent-self-switch-survives",
    source="`CHANGELOG.md` 0.2.0; architecture §1.5",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"ssh", "qemu"}),
    waiting={},
)
