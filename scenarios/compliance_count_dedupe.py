"""`compliance-count-dedupe`: out of scope: decisions.md defers compliance frameworks."""

from harness.runner import waiting_entry

SCENARIO = waiting_entry(
    "compliance-count-dedupe",
    source="commit `1c26de0`",
    backends={"local", "sim"},
    why="out of scope: decisions.md defers compliance frameworks",
)
