"""`cp-enroll-renew-contract`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="cp-enroll-renew-contract",
    source="`CPT/enroll.rs`, `renew.rs`, `bootstrap_report.rs`",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"local"}),
    waiting={"local": WHY},
)
