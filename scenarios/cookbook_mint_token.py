"""`cookbook-mint-token`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="cookbook-mint-token",
    source='002 "Mint a bootstrap token"; `bootstrap-token-lifecycle.md`; `CPT/enroll.rs`',
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"tpm", "qemu", "local"}),
    waiting={"local": WHY},
)
