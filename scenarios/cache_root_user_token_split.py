"""`cache-root-user-token-split`: the field report (section E), for its own issue."""

from harness.runner import FIELD_REPORT, waiting_entry

SCENARIO = waiting_entry(
    "cache-root-user-token-split",
    source='003 "Root vs User Token Split"',
    backends={"local", "qemu", "ssh"},
    why=FIELD_REPORT,
)
