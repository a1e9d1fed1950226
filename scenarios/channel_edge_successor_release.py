"""`channel-edge-successor-release`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = (
    "not written yet: needs Shape fields for several channels joined by channel edges "
    "(fleet_sim fleet_doc/World and the local backend's channels); time ran out"
)

SCENARIO = Scenario(
    id="channel-edge-successor-release",
    source="commits `c5a87fa`, `c3ab9d7`",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"sim", "local"}),
    waiting={"sim": WHY, "local": WHY},
)
