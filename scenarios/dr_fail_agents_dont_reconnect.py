"""`dr-fail-agents-dont-reconnect`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = (
    "not written yet (issue 11 time box): needs a host whose agent cert expires across "
    "the wipe, then Fleet.mint_token + a restarted agent to re-enrol it"
)

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
