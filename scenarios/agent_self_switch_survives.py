"""`agent-self-switch-survives`: runs only on qemu or ssh; not written for ssh yet."""

from harness.runner import SSH_NOT_PROVEN, waiting_entry

SCENARIO = waiting_entry(
    "agent-self-switch-survives",
    source="`CHANGELOG.md` 0.2.0; architecture §1.5",
    backends={"qemu", "ssh"},
    why=SSH_NOT_PROVEN,
)
