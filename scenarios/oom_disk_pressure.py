"""`oom-disk-pressure`: the field report (section E), for its own issue."""

from harness.runner import FIELD_REPORT, waiting_entry

SCENARIO = waiting_entry(
    "oom-disk-pressure",
    source='003 "Disk Pressure"; "Reasoning the recurring errors"',
    backends={"local", "qemu", "sim", "ssh"},
    why=FIELD_REPORT,
)
