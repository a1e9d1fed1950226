"""`agent-identity-binding`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="agent-identity-binding",
    source=(
        "004 Surface (machine id = cert CN); `CPT/checkin.rs`, `confirm.rs`, `enroll.rs`, "
        "`renew.rs`, `whoami.rs`"
    ),
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"qemu", "sim", "local"}),
    waiting={"sim": WHY, "local": WHY},
)
