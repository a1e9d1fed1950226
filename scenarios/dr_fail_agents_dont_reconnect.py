"""`dr-fail-agents-dont-reconnect`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="dr-fail-agents-dont-reconnect",
    source="001 bullet 2; `docs/operations/bootstrap-token-lifecycle.md`",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"qemu", "local"}),
    waiting={"local": WHY},
)
