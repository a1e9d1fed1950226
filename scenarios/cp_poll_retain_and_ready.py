"""`cp-poll-retain-and-ready`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="cp-poll-retain-and-ready",
    source="`CPT/channel_refs_gitops.rs`, `not_ready_gate.rs`, `rebuild_recovery.rs`",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"sim", "local"}),
    waiting={"sim": WHY, "local": WHY},
)
