"""`cache-401-is-not-failure`: the field report (section E), for its own issue."""

from harness.runner import FIELD_REPORT, waiting_entry

SCENARIO = waiting_entry(
    "cache-401-is-not-failure",
    source='003 "401 Is Not a Failure"; "The Three Gaps"',
    backends={"local", "qemu", "ssh"},
    why=FIELD_REPORT,
)
