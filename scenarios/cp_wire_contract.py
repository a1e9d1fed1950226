"""`cp-wire-contract`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="cp-wire-contract",
    source="`CPT/checkin.rs`, `confirm.rs`, `healthz.rs`, `whoami.rs`, `closure_proxy.rs`",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"local"}),
    waiting={"local": WHY},
)
