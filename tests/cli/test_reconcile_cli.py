"""`nixfleet reconcile --fleet FILE --observed FILE [--now RFC3339]`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nixfleet.cli.main import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reconciler"
NOW = "2026-04-24T10:00:00Z"
NIXFLEET = Path(sys.executable).parent / "nixfleet"


def _case(name: str) -> Path:
    return FIXTURES / name


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["reconcile", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    "case",
    ["host/host_failed_triggers_halt", "host/healthy_soak_elapsed", "channels/topological_order"],
)
def test_prints_the_expected_actions(capsys: pytest.CaptureFixture[str], case: str) -> None:
    d = _case(case)
    rc, out, err = _run(
        capsys, "--fleet", str(d / "fleet.json"), "--observed", str(d / "observed.json"),
        "--now", NOW,
    )
    assert (rc, err) == (0, "")
    assert json.loads(out) == json.loads((d / "expected.json").read_text())
    assert out.startswith("[\n  {\n    \"action\"")  # indent 2


def test_empty_action_list(capsys: pytest.CaptureFixture[str]) -> None:
    d = _case("host/confirmwindow_timeout_reverted")
    rc, out, _ = _run(
        capsys, "--fleet", str(d / "fleet.json"), "--observed", str(d / "observed.json")
    )
    assert rc == 0 and json.loads(out) == []


def test_now_matters(capsys: pytest.CaptureFixture[str]) -> None:
    d = _case("host/healthy_soak_not_elapsed")  # Healthy since 09:58, soak 5 minutes
    args = ["--fleet", str(d / "fleet.json"), "--observed", str(d / "observed.json")]
    assert json.loads(_run(capsys, *args, "--now", NOW)[1]) == []
    later = json.loads(_run(capsys, *args, "--now", "2026-04-24T12:03:00+02:00")[1])
    assert later == [{"action": "soak_host", "rollout": "stable@r2", "host": "h1"}]


# --- bad input: one line naming the file and the field, exit 2 -----------------------


def _write(tmp_path: Path, name: str, doc: Any) -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def _good(name: str) -> Any:
    return json.loads((_case("rollout/planning_to_executing") / name).read_text())


def _bad_observed_cases() -> list[tuple[str, Any, str]]:
    no_rollouts = _good("observed.json")
    del no_rollouts["activeRollouts"]
    wrong_type = _good("observed.json")
    wrong_type["hostState"]["h1"]["online"] = "yes"
    bad_state = _good("observed.json")
    bad_state["activeRollouts"][0]["hostStates"]["h2"] = "Exploded"
    bad_rollout_state = _good("observed.json")
    bad_rollout_state["activeRollouts"][0]["state"] = "Paused"
    bad_since = _good("observed.json")
    bad_since["activeRollouts"][0]["lastHealthySince"] = {"h1": "yesterday"}
    return [
        ("missing field", no_rollouts, "activeRollouts: missing"),
        ("wrong type", wrong_type, "hostState.h1.online: expected a boolean"),
        ("unknown host state", bad_state, "activeRollouts[0].hostStates.h2: expected one of"),
        ("unknown rollout state", bad_rollout_state, "activeRollouts[0].state: expected one of"),
        ("bad instant", bad_since, "activeRollouts[0].lastHealthySince.h1: not an RFC 3339"),
        ("bad JSON", '{"channelRefs": {', "not valid JSON (line 1"),
        ("not an object", "[]", "expected a JSON object"),
    ]


@pytest.mark.parametrize(
    ("doc", "needle"),
    [(doc, needle) for _, doc, needle in _bad_observed_cases()],
    ids=[name for name, _, _ in _bad_observed_cases()],
)
def test_bad_observed_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, doc: Any, needle: str
) -> None:
    fleet = _write(tmp_path, "fleet.json", _good("fleet.json"))
    observed = _write(tmp_path, "observed.json", doc)
    rc, out, err = _run(capsys, "--fleet", str(fleet), "--observed", str(observed), "--now", NOW)
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and err.endswith("\n")
    assert err.startswith(f"nixfleet: {observed}: ")
    assert needle in err


def test_error_stays_on_one_line_for_a_key_with_a_newline(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = _good("observed.json")
    doc["hostProbesPassing"] = {"h1\nh2": "yes"}
    observed = _write(tmp_path, "observed.json", doc)
    fleet = _case("rollout/planning_to_executing") / "fleet.json"
    rc, _, err = _run(capsys, "--fleet", str(fleet), "--observed", str(observed))
    assert rc == 2
    assert err == (
        f"nixfleet: {observed}: hostProbesPassing.h1\\nh2: expected a boolean, got 'yes'\n"
    )


def test_bad_fleet_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = _good("fleet.json")
    doc["hosts"]["h2"]["channel"] = 3
    fleet = _write(tmp_path, "fleet.json", doc)
    observed = _write(tmp_path, "observed.json", _good("observed.json"))
    rc, out, err = _run(capsys, "--fleet", str(fleet), "--observed", str(observed))
    assert (rc, out) == (2, "")
    assert err == f"nixfleet: {fleet}: hosts.h2.channel: expected a string, got an integer\n"


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    observed = _write(tmp_path, "observed.json", _good("observed.json"))
    missing = tmp_path / "nope.json"
    rc, _, err = _run(capsys, "--fleet", str(missing), "--observed", str(observed))
    assert rc == 2
    assert err == f"nixfleet: reconcile: cannot read {missing} (No such file or directory)\n"


def test_bad_now(capsys: pytest.CaptureFixture[str]) -> None:
    d = _case("host/queued_to_dispatched")
    rc, _, err = _run(
        capsys, "--fleet", str(d / "fleet.json"), "--observed", str(d / "observed.json"),
        "--now", "noon",
    )
    assert rc == 2
    assert err == "nixfleet: --now: not an RFC 3339 timestamp: 'noon'\n"


# --- through a real process -------------------------------------------------------------


def test_real_process_prints_actions() -> None:
    d = _case("rollout/planning_to_executing")
    proc = subprocess.run(
        [str(NIXFLEET), "reconcile", "--fleet", str(d / "fleet.json"),
         "--observed", str(d / "observed.json"), "--now", NOW],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert json.loads(proc.stdout) == json.loads((d / "expected.json").read_text())


def test_real_process_bad_file_has_no_traceback(tmp_path: Path) -> None:
    doc = _good("observed.json")
    doc["activeRollouts"][0]["currentWave"] = "zero"
    observed = _write(tmp_path, "observed.json", doc)
    fleet = _case("rollout/planning_to_executing") / "fleet.json"
    proc = subprocess.run(
        [str(NIXFLEET), "reconcile", "--fleet", str(fleet), "--observed", str(observed)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"nixfleet: {observed}: activeRollouts[0].currentWave: "
        "expected a non-negative integer, got 'zero'"
    ]
