"""`ci-container-store-shadowing`: the field report (section E), for its own issue."""

from harness.runner import FIELD_REPORT, waiting_entry

SCENARIO = waiting_entry(
    "ci-container-store-shadowing",
    source='003 "Reasoning the recurring errors"',
    backends={"local", "ssh"},
    why=FIELD_REPORT,
)
