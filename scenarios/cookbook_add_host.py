"""`cookbook-add-host`: runs only on qemu or ssh, not built yet."""

from harness.runner import waiting_entry

SCENARIO = waiting_entry(
    "cookbook-add-host",
    source='002 "Add a host to the fleet"',
    backends={"qemu", "ssh"},
)
