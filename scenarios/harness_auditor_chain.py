"""`harness-auditor-chain`: out of scope: decisions.md defers the auditor evidence chain."""

from harness.runner import waiting_entry

SCENARIO = waiting_entry(
    "harness-auditor-chain",
    source="reference harness scenario harness-auditor-chain",
    backends={"local", "sim"},
    why="out of scope: decisions.md defers the auditor evidence chain",
)
