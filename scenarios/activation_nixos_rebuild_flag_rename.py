"""`activation-nixos-rebuild-flag-rename`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = "not written yet"

SCENARIO = Scenario(
    id="activation-nixos-rebuild-flag-rename",
    source=(
        '000 "Agent fails activation with unrecognized arguments: --system" (004 still says "via '
        'nixos-rebuild switch")'
    ),
    summary=WHY,
    shape=Shape(),
    steps=not_written(WHY),
    checks=[],
    backends=frozenset({"ssh", "qemu", "local"}),
    waiting={"local": WHY},
)
