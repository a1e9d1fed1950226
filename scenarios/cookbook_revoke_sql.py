"""`cookbook-revoke-sql`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="cookbook-revoke-sql",
    source=(
        '002 "Revoke a host\'s cert"; `CP/src/server/middleware.rs`, `src/db/revocations.rs`, '
        "`src/polling/revocations_poll.rs`"
    ),
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"qemu", "local"}),
    waiting={"local": WHY},
)
