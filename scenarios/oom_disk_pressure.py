"""`oom-disk-pressure`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "section E belongs to the field-report issue (store-fix, cache doctor, link drop)"

SCENARIO = Scenario(
    id="oom-disk-pressure",
    source='003 "Disk Pressure"; "Reasoning the recurring errors"',
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"ssh", "qemu", "sim", "local"}),
    waiting={"sim": WHY, "local": WHY},
)
