"""`agent-offline-manifest-cache`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = (
    "design open: the catalogue's checkin <= P + 30 s after a 10-poll outage contradicts the "
    "checkin backoff of lifecycle 5.1 (poll x 2^min(failures,3), up to 8 polls), and a "
    "converged agent never reads its manifest cache (the sim hosts keep none), so the "
    "mutant (cache lost) cannot show without a mid-rollout setup"
)

SCENARIO = Scenario(
    id="agent-offline-manifest-cache",
    source="004 Key types (manifest cache); architecture §5",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"qemu", "sim", "local"}),
    waiting={"sim": WHY, "local": WHY},
)
