"""`cache-push-or-true-semantics`: the field report (section E), for its own issue."""

from harness.runner import FIELD_REPORT, waiting_entry

SCENARIO = waiting_entry(
    "cache-push-or-true-semantics",
    source='003 "Cachix", "Atticd", "Auto-Cancel"',
    backends={"local", "ssh"},
    why=FIELD_REPORT,
)
