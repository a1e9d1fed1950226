"""`cache-push-or-true-semantics`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "section E belongs to the field-report issue (store-fix, cache doctor, link drop)"

SCENARIO = Scenario(
    id="cache-push-or-true-semantics",
    source='003 "Cachix", "Atticd", "Auto-Cancel"',
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"ssh", "local"}),
    waiting={"local": WHY},
)
