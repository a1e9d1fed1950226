"""`vm-lifecycle-footguns`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "needs the qemu backend"

SCENARIO = Scenario(
    id="vm-lifecycle-footguns",
    source="`docs/operations/vm-lifecycle.md`, `lib/mk-vm-apps.nix`",
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"qemu"}),
    waiting={},
)
