"""`store-repair-dangling-rows`: the field report (section E), for its own issue."""

from harness.runner import FIELD_REPORT, waiting_entry

SCENARIO = waiting_entry(
    "store-repair-dangling-rows",
    source='003 "The VM" (store-fix)',
    backends={"local", "qemu", "ssh"},
    why=FIELD_REPORT,
)
