"""`copy-interrupted-link-drop`: the field report (section E), for its own issue."""

from harness.runner import FIELD_REPORT, waiting_entry

SCENARIO = waiting_entry(
    "copy-interrupted-link-drop",
    source='003 "The VM"',
    backends={"qemu", "ssh"},
    why=FIELD_REPORT,
)
