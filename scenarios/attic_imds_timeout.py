"""`attic-imds-timeout`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "section E belongs to the field-report issue (store-fix, cache doctor, link drop)"

SCENARIO = Scenario(
    id="attic-imds-timeout",
    source='003 "The AWS Credential Chain Problem"',
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"ssh", "qemu", "local"}),
    waiting={"local": WHY},
)
