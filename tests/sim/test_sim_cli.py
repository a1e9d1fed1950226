"""`fleet-sim run`: report files, repeatable trace hashes, scenario files, one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fleet_sim.main import main, run_world
from fleet_sim.metrics import compute, describe_fault, fault_label, series
from fleet_sim.scenario_file import load_scenario, parse_fault_flag
from fleet_sim.world import SimConfig, World

FLEET_SIM = Path(sys.executable).parent / "fleet-sim"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HASH = re.compile(r"^trace hash: ([0-9a-f]{64})$", re.M)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["run", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _hash(out: str) -> str:
    found = HASH.findall(out)
    assert len(found) == 1, out
    return found[0]


def test_run_writes_the_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    report = tmp_path / "r"
    rc, out, err = _run(capsys, "--hosts", "20", "--seed", "3", "--report", str(report),
                        "--fault", "CpWipe:at=400,duration=20")  # fmt: skip
    assert rc == 0, out + err
    assert "result: PASS" in out

    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["hosts"] == 20 and metrics["waves"] == 3
    assert metrics["passed"] is True
    assert metrics["trace_hash"] == _hash(out)
    assert metrics["converged_hosts"] == 20
    assert [w["converged"] for w in metrics["per_wave"]] == metrics["config"]["wave_sizes"]
    assert metrics["counts"]["dispatch"] == 20 and metrics["counts"]["cp-wipe"] == 1
    assert metrics["config"]["faults"] == [
        {"kind": "CpWipe", "at": 400.0, "duration": 20.0, "name": "CpWipe"}
    ]
    assert {v["name"] for v in metrics["verdicts"]} >= {
        "no-ghost-loops", "checkin-within-2-polls-of-cp-start"
    }  # fmt: skip

    for png in ("converged.png", "rates.png", "latency.png"):
        data = (report / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, png

    md = (report / "summary.md").read_text()
    assert "| checker | verdict | detail |" in md
    assert "| no-ghost-loops | pass |" in md
    assert metrics["trace_hash"] in md
    assert "![Hosts on the declared closure over time, per wave](converged.png)" in md
    html = (report / "summary.html").read_text()
    assert '<img src="converged.png"' in html and '<td class="pass">pass</td>' in html


def test_same_seed_same_trace_and_same_report(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    hashes, reports = [], []
    for i, seed in enumerate(("5", "5", "6")):
        reports.append(tmp_path / f"r{i}")
        rc, out, _err = _run(capsys, "--hosts", "15", "--seed", seed, "-q",
                             "--report", str(reports[-1]))  # fmt: skip
        assert rc == 0
        hashes.append(_hash(out))
    assert hashes[0] == hashes[1] != hashes[2]
    for name in ("metrics.json", "summary.md", "summary.html", "converged.png", "rates.png",
                 "latency.png"):  # fmt: skip
        assert (reports[0] / name).read_bytes() == (reports[1] / name).read_bytes(), name


def test_progress_ticks_do_not_change_the_trace() -> None:
    plain = World(SimConfig(hosts=12, seed=9)).run()
    ticks: list[float] = []
    ticked = run_world(World(SimConfig(hosts=12, seed=9)), lambda w: ticks.append(w.env.now))
    assert ticks and ticks == sorted(ticks)
    assert ticked.history.trace_hash() == plain.history.trace_hash()


def test_a_failing_checker_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _err = _run(capsys, "--hosts", "20", "--seed", "2", "--checkers", "clean", "-q",
                         "--fault", "ActivationFailures:at=0,hosts=0.1", "--no-report")  # fmt: skip
    assert rc == 1
    assert "FAIL all-converged" in out and "result: FAIL (all-converged)" in out


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("Nope:at=1", '--fault Nope:at=1: kind: unknown fault kind "Nope"; known: Partition'),
        ("CpWipe:at=x", '--fault CpWipe:at=x: at: expected a number, got "x"'),
        ("CpWipe:duration=20", "--fault CpWipe:duration=20: at: required"),
        ("CpWipe:at=1,bogus=2", "--fault CpWipe:at=1,bogus=2: bogus: not a field of CpWipe"),
        ("Partition:at=1,hosts=1.5", "hosts: a fraction of the fleet must be within 0..1"),
        ("Partition:at=1,hosts=host-99", "hosts: no such hosts in a 10-host fleet: host-99"),
        ("Loss:at=1,probability=2", "probability: must be within 0..1, got 2.0"),
    ],
)
def test_bad_fault_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], flag: str, message: str
) -> None:
    rc, out, err = _run(capsys, "--hosts", "10", "--no-report", "--fault", flag)
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("fleet-sim: "), err
    assert message in err


def test_console_script_bad_fault_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(FLEET_SIM), "run", "--hosts", "5", "--fault", "CpWipe:at=soon"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == 'fleet-sim: --fault CpWipe:at=soon: at: expected a number, got "soon"\n'
    assert not (tmp_path / "reports").exists()


def test_scenario_file_with_flag_overrides(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    scenario = tmp_path / "wipe.toml"
    scenario.write_text(
        'name = "cp-wipe"\nhosts = 12\nseed = 4\npoll_secs = 60\n'
        "latency = { median = 0.03, sigma = 0.4 }\n\n"
        '[[faults]]\nkind = "CpWipe"\nat = 400\nduration = 20\n'
    )
    report = tmp_path / "r"
    loss = "Loss:at=100,duration=60,probability=0.2"
    rc, out, err = _run(capsys, "--scenario", str(scenario), "--hosts", "16", "--report",
                        str(report), "--fault", loss)  # fmt: skip
    assert rc in (0, 1), err
    assert "fleet-sim run (cp-wipe)" in out
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["hosts"] == 16 and metrics["config"]["seed"] == 4
    assert [f["kind"] for f in metrics["config"]["faults"]] == ["CpWipe", "Loss"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.toml", 'hosts = 10\n[[faults]]\nkind = "CpWipe"\nat = "soon"\n',
         'a.toml: faults[0].at: expected a number, got "soon"'),
        ("b.json", '{"hosts": 10, "polic": "halt"}', "b.json: polic: not a simulator setting"),
        ("c.json", '{"hosts": 10, "policy": "sometimes"}',
         "c.json: policy: must be one of halt, rollback-and-halt"),
        ("d.toml", "hosts = [", "d.toml: not valid TOML"),
        ("e.json", '{"faults": [{"kind": "Partition", "at": 1, "hosts": ["host-77"]}]}',
         "e.json: faults[0].hosts: no such hosts in a 100-host fleet: host-77"),
        ("f.toml", "hosts = true\n", "f.toml: hosts: expected an integer, got true"),
    ],
)  # fmt: skip
def test_bad_scenario_file_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    rc, out, err = _run(capsys, "--scenario", str(path), "--no-report")
    assert (rc, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith(f"fleet-sim: {tmp_path}/"), err
    assert message in err


def test_scenario_loads_json_like_toml(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps({
        "hosts": 30, "policy": "halt", "activation_secs": [10, 20],
        "faults": [{"kind": "SlowActivation", "at": 0, "hosts": 0.2, "seconds": [200, 290]}],
    }))  # fmt: skip
    s = load_scenario(tmp_path / "s.json")
    config = s.sim_config()
    assert (config.hosts, config.policy, config.activation_secs) == (30, "halt", (10.0, 20.0))
    assert describe_fault(config.faults[0]) == describe_fault(
        parse_fault_flag("SlowActivation:at=0,hosts=0.2,seconds=200+290").build()
    )


def test_fault_label_is_its_flag() -> None:
    for flag in ("CpWipe:at=600,duration=20", "Partition:at=300,duration=120,hosts=0.1",
                 "SlowActivation:at=0,hosts=host-1+host-2,seconds=200+290"):  # fmt: skip
        spec = parse_fault_flag(flag)
        assert fault_label(describe_fault(spec.build())) == flag
        assert parse_fault_flag(fault_label(describe_fault(spec.build()))) == spec


def test_wave_convergence_matches_the_history() -> None:
    world = World(SimConfig(hosts=30, seed=11)).run()
    m = compute(world)
    for wave, row in zip(world.waves, m["per_wave"], strict=True):
        last = max(
            op.t for op in world.history.of("activated")
            if op.host in wave and op.detail["closure"] == world.target(op.host)
        )  # fmt: skip
        assert row["converged_at"] == round(last, 6)
        assert row["converged"] == row["hosts"] == len(wave)
    assert m["convergence_secs"] == max(w["secs_after_release"] for w in m["per_wave"])
    s = series(world)
    assert [points[-1][1] for points in s.converged] == [len(w) for w in world.waves]
    assert sum(s.rates["dispatch"]) == m["counts"]["dispatch"] == 30
    assert len(s.latencies) == m["checkin_latency_secs"]["n"] == m["counts"]["checkin"]
