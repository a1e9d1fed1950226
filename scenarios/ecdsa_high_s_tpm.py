"""`ecdsa-high-s-tpm`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="ecdsa-high-s-tpm",
    source='000 "Verify fails with BadSignature…"; `crates/nixfleet-reconciler/src/verify.rs`',
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"tpm", "qemu", "local"}),
    waiting={"local": WHY},
)
