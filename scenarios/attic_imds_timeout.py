"""`attic-imds-timeout`: the field report (section E), for its own issue."""

from harness.runner import FIELD_REPORT, waiting_entry

SCENARIO = waiting_entry(
    "attic-imds-timeout",
    source='003 "The AWS Credential Chain Problem"',
    backends={"local", "qemu", "ssh"},
    why=FIELD_REPORT,
)
