"""`confirm-deadline-cascade`: not written on a backend built here yet (see WHY)."""

from harness.fleet import Scenario, Shape, not_written

WHY = (
    "needs a design call first: the CP's lint (`--confirm-deadline-secs` ≥ "
    "MIN_CONFIRM_WINDOW_SECS = 30, nixfleet/cp/config.py) does not know the agents' "
    "activation budget (agent --switch-timeout-secs, 300 s), so it cannot reject "
    "T < 310 s as the catalogue's Fixed says; and no Fleet verb restarts the CP with "
    "another window to show the lint on sim and local"
)

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
