"""Reconciler fixtures (lifecycle §6): parse, reconcile at a fixed instant, compare in order.

Each `tests/fixtures/reconciler/<category>/<case>/` holds fleet.json, observed.json and
expected.json. The meta-tests below keep the fixture set honest: the 18 reference cases
exist, and every gate, policy, host state and rollout state is exercised somewhere.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nixfleet.core.actions import ACTION_TAGS, dump_actions, parse_actions
from nixfleet.core.fleet import HEALTH_FAILURE_POLICIES, parse_fleet
from nixfleet.core.gates import GATE_NAMES
from nixfleet.core.observed import parse_observed
from nixfleet.core.reconcile import reconcile
from nixfleet.core.rollout_state import HOST_ROLLOUT_STATES, ROLLOUT_STATES

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reconciler"
NOW = datetime(2026, 4, 24, 10, 0, 0, tzinfo=UTC)
CASES = sorted(p.parent for p in FIXTURES.glob("*/*/expected.json"))

REFERENCE_CASES = [
    "budgets_edges/edge_predecessor_blocks",
    "budgets_edges/edge_predecessor_done_dispatch",
    "host/confirmwindow_timeout_reverted",
    "host/healthy_soak_elapsed",
    "host/healthy_soak_not_elapsed",
    "host/healthy_to_soaked",
    "host/host_failed_triggers_halt",
    "host/offline_host_skipped",
    "host/quarantined_closure_skips_dispatch",
    "host/queued_to_dispatched",
    "rollout/all_waves_converged",
    "rollout/channel_unknown",
    "rollout/onfailure_halt",
    "rollout/onfailure_rollback_and_halt",
    "rollout/pending_to_planning",
    "rollout/planning_to_executing",
    "rollout/wave_active_to_soaking",
    "rollout/wave_soaking_to_promoted",
]

# The exact reason formats of lifecycle §3.4, written independently of gates.py.
GATE_REASONS = {
    "quarantine": re.compile(
        r"channel \S+ closure \S+ quarantined \(sustained probe failures\); "
        r"push a new closure to clear"
    ),
    "channel-edges": re.compile(r"channelEdges predecessor channel '[^']+' not converged"),
    "wave-promotion": re.compile(r"wave-promotion: host_wave=\d+ > current_wave=\d+"),
    "host-edges": re.compile(r"host-edge: gating host '[^']+' not yet Soaked/Converged"),
    "disruption-budget": re.compile(r"disruption-budget: \d+/\d+ in flight \(.+\)"),
    "compliance-wave": re.compile(
        r"compliance-wave: \d+ outstanding failure\(s\) on hosts in wave < \d+"
    ),
}


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def _case_id(case: Path) -> str:
    return case.relative_to(FIXTURES).as_posix()


def test_fixture_tree_is_complete() -> None:
    assert len(CASES) >= 60
    ids = {_case_id(c) for c in CASES}
    missing = [c for c in REFERENCE_CASES if c not in ids]
    assert not missing, f"reference cases missing: {missing}"
    for case in CASES:
        for name in ("fleet.json", "observed.json", "expected.json"):
            assert (case / name).is_file(), f"{_case_id(case)}: {name} missing"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fixture(case: Path) -> None:
    fleet = parse_fleet(_load(case / "fleet.json"), source=str(case / "fleet.json"))
    observed = parse_observed(_load(case / "observed.json"), source=str(case / "observed.json"))
    raw_expected = _load(case / "expected.json")
    expected = parse_actions(raw_expected, source=str(case / "expected.json"))

    actual = reconcile(fleet, observed, NOW)

    assert actual == expected
    assert dump_actions(actual) == raw_expected  # the JSON form too (key order irrelevant)


# --- meta: the fixture set covers every gate, policy and state ----------------------


def _all_expected() -> list[dict[str, Any]]:
    return [a for case in CASES for a in _load(case / "expected.json")]


def _all_observed() -> list[dict[str, Any]]:
    return [_load(case / "observed.json") for case in CASES]


def test_every_gate_reason_appears_in_a_fixture() -> None:
    assert set(GATE_REASONS) == set(GATE_NAMES)
    reasons = [a["reason"] for a in _all_expected() if a["action"] == "skip"]
    for gate, pattern in GATE_REASONS.items():
        assert any(pattern.fullmatch(r) for r in reasons), f"no fixture blocks on {gate}"
    assert "offline" in reasons


def test_every_policy_halts_in_a_fixture() -> None:
    halts = [a["reason"] for a in _all_expected() if a["action"] == "halt_rollout"]
    for policy in HEALTH_FAILURE_POLICIES:
        assert any(r.endswith(f"(policy: {policy})") for r in halts), policy
    rollbacks = [a for a in _all_expected() if a["action"] == "rollback_host"]
    assert rollbacks


def test_every_host_and_rollout_state_appears_in_a_fixture() -> None:
    host_states: set[str] = set()
    rollout_states: set[str] = set()
    for obs in _all_observed():
        for ro in obs["activeRollouts"]:
            rollout_states.add(ro["state"])
            host_states.update(ro["hostStates"].values())
    assert host_states == set(HOST_ROLLOUT_STATES)
    assert rollout_states == set(ROLLOUT_STATES)


def test_every_reconciler_action_appears_in_a_fixture() -> None:
    tags = {a["action"] for a in _all_expected()}
    emitted_by_reconcile = set(ACTION_TAGS.values()) - {"rotate_trust_root"}
    assert emitted_by_reconcile <= tags, emitted_by_reconcile - tags
