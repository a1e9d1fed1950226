"""`cache-endpoint-namespace`: the field report (section E), for its own issue."""

from harness.runner import FIELD_REPORT, waiting_entry

SCENARIO = waiting_entry(
    "cache-endpoint-namespace",
    source='003 "Execution Context and Network Identity"',
    backends={"local", "qemu", "ssh"},
    why=FIELD_REPORT,
)
