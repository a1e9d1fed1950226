"""`secrets-lost-after-store-corruption`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "section E belongs to the field-report issue (store-fix, cache doctor, link drop)"

SCENARIO = Scenario(
    id="secrets-lost-after-store-corruption",
    source='003 "The VM"',
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"ssh", "qemu"}),
    waiting={},
)
