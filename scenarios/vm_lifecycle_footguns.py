"""`vm-lifecycle-footguns`: runs only on qemu, not built yet."""

from harness.runner import waiting_entry

SCENARIO = waiting_entry(
    "vm-lifecycle-footguns",
    source="`docs/operations/vm-lifecycle.md`, `lib/mk-vm-apps.nix`",
    backends={"qemu"},
)
