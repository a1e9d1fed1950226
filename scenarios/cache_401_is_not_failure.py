"""`cache-401-is-not-failure`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "section E belongs to the field-report issue (store-fix, cache doctor, link drop)"

SCENARIO = Scenario(
    id="cache-401-is-not-failure",
    source='003 "401 Is Not a Failure"; "The Three Gaps"',
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"ssh", "qemu", "local"}),
    waiting={"local": WHY},
)
