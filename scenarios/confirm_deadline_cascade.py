"""`confirm-deadline-cascade`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="confirm-deadline-cascade",
    source="`modules/scopes/nixfleet/_control-plane.nix` (360 s default, unsafe below ~310 s)",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"qemu", "sim", "local"}),
    waiting={"sim": WHY, "local": WHY},
)
