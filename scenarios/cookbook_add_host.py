"""`cookbook-add-host`: runs only on qemu or ssh; not written for ssh yet."""

from harness.runner import SSH_NOT_PROVEN, waiting_entry

SCENARIO = waiting_entry(
    "cookbook-add-host",
    source='002 "Add a host to the fleet"',
    backends={"qemu", "ssh"},
    why=SSH_NOT_PROVEN,
)
