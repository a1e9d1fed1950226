"""`harness-auditor-chain`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "out of scope: decisions.md defers the auditor evidence chain"

SCENARIO = Scenario(
    id="harness-auditor-chain",
    source="reference harness scenario harness-auditor-chain",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"sim", "local"}),
    waiting={"sim": WHY, "local": WHY},
)
