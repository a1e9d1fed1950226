"""`fleet-sim sweep`: seeds × parameters on a local process pool and on a Dask cluster,
aggregated into one report that does not depend on completion order."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet_sim.main import main
from fleet_sim.scenario_file import Scenario
from fleet_sim.sweep import RunTask, aggregate, parse_seeds, plan, run_task
from nixfleet.core.errors import BadInput


def _sweep(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["sweep", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _expected_hash(seed: int, **config: Any) -> str:
    result = run_task(RunTask(params=(), seed=seed, config=config))
    return str(result["metrics"]["trace_hash"])


def _check_report(report: Path, *, hosts: list[int], seeds: list[int]) -> dict[str, Any]:
    agg = json.loads((report / "sweep.json").read_text())
    assert agg["params"] == {"hosts": hosts}
    assert agg["seeds"] == seeds
    assert agg["runs"] == agg["passed"] == len(hosts) * len(seeds)
    combos = agg["combinations"]
    assert [c["params"] for c in combos] == [{"hosts": h} for h in hosts]
    for c in combos:
        assert (c["runs"], c["passed"], c["pass_rate"]) == (len(seeds), len(seeds), 1.0)
        conv = c["convergence_secs"]
        assert conv["n"] == len(seeds) and 0 < conv["p50"] <= conv["p90"] <= conv["max"]
    # results sorted by combination then seed, whatever order the workers finished in
    assert [(r["params"]["hosts"], r["seed"]) for r in agg["results"]] == [
        (h, s) for h in hosts for s in seeds
    ]
    md = (report / "sweep.md").read_text()
    assert "| combination | passed | pass rate | converged | convergence p50 |" in md
    assert f"| hosts={hosts[0]} | {len(seeds)}/{len(seeds)} | 100 % |" in md
    return agg


def test_sweep_on_a_local_process_pool(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    report = tmp_path / "sweep"
    rc, out, err = _sweep(capsys, "--seeds", "1-3", "--param", "hosts=10,20", "--workers", "2",
                          "--report", str(report))  # fmt: skip
    assert rc == 0, out + err
    assert "result: PASS (6 of 6 runs pass every checker)" in out
    agg = _check_report(report, hosts=[10, 20], seeds=[1, 2, 3])
    # a worker process runs the same simulation as this process, byte for byte
    first = agg["results"][0]
    assert first["trace_hash"] == _expected_hash(1, hosts=10)


@pytest.fixture(scope="module")
def dask_scheduler() -> Iterator[str]:
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
        dashboard_address=None,
    )  # fmt: skip
    try:
        yield str(cluster.scheduler_address)
    finally:
        cluster.close()


def test_sweep_on_a_dask_cluster(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, dask_scheduler: str
) -> None:
    report = tmp_path / "sweep"
    rc, out, err = _sweep(capsys, "--seeds", "4,5", "--param", "hosts=12,24", "--scheduler",
                          dask_scheduler, "--report", str(report))  # fmt: skip
    assert rc == 0, out + err
    assert f"on {dask_scheduler}" in out
    agg = _check_report(report, hosts=[12, 24], seeds=[4, 5])
    last = agg["results"][-1]
    assert last["trace_hash"] == _expected_hash(5, hosts=24)


def test_a_failing_combination_lowers_its_pass_rate(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    report = tmp_path / "sweep"
    rc, out, _err = _sweep(capsys, "--seeds", "1-2", "--hosts", "20", "--checkers", "clean",
                           "--param", "policy=halt,rollback-and-halt", "--fault",
                           "ActivationFailures:at=0,hosts=0.1", "--workers", "2",
                           "--report", str(report), "-q")  # fmt: skip
    assert rc == 1
    assert "result: FAIL (0 of 4 runs pass every checker)" in out
    agg = json.loads((report / "sweep.json").read_text())
    for c in agg["combinations"]:
        assert c["pass_rate"] == 0.0 and c["failing_checkers"]["all-converged"] == 2
        assert c["failed_seeds"] == [1, 2]
    assert "## Failed runs" in (report / "sweep.md").read_text()


def test_aggregate_ignores_completion_order() -> None:
    params: list[tuple[str, list[Any]]] = [("hosts", [10, 20]), ("policy", ["halt"])]
    tasks = plan(Scenario(), [1, 2], params)
    assert [(t.params, t.seed) for t in tasks] == [
        ((("hosts", 10), ("policy", "halt")), 1), ((("hosts", 10), ("policy", "halt")), 2),
        ((("hosts", 20), ("policy", "halt")), 1), ((("hosts", 20), ("policy", "halt")), 2),
    ]  # fmt: skip
    results = [
        {"params": dict(t.params), "seed": t.seed, "passed": t.seed == 1,
         "verdicts": [{"name": "x", "ok": t.seed == 1, "detail": ""}],
         "metrics": {"convergence_secs": 100.0 * t.seed, "settled_at": 60.0, "events": 5,
                     "trace_hash": f"h{t.seed}"}}
        for t in tasks
    ]  # fmt: skip
    shuffled = results[:]
    random.Random(0).shuffle(shuffled)
    kw: dict[str, Any] = {"base": {}, "faults": [], "checkers": "default"}
    a = aggregate(results, params, [1, 2], **kw)
    assert a == aggregate(shuffled, params, [1, 2], **kw)
    assert [c["pass_rate"] for c in a["combinations"]] == [0.5, 0.5]
    assert a["combinations"][0]["convergence_secs"] == {
        "n": 2, "p50": 100.0, "p90": 200.0, "p99": 200.0, "max": 200.0
    }  # fmt: skip


def test_parse_seeds() -> None:
    assert parse_seeds("1-3") == [1, 2, 3]
    assert parse_seeds("7") == [7]
    assert parse_seeds("9-10,1,3-4") == [1, 3, 4, 9, 10]
    for bad in ("", "a-b", "5-2"):
        with pytest.raises(BadInput):
            parse_seeds(bad)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--param", "hosts=10,x"], "--param hosts=10,x: hosts: expected an integer"),
        (["--param", "policy=halt,never"], "policy: must be one of halt, rollback-and-halt"),
        (["--param", "hosts=1", "--param", "hosts=2"], "--param: hosts: swept twice"),
        (["--seeds", "3-1"], "--seeds 3-1: 3-1: empty range"),
        (["--param", "colour=red"], "--param colour=red: colour: not a simulator setting"),
        (["--param", "seed=1,2"], "--param: seed: use --seeds to sweep seeds"),
        (["--workers", "0"], "--workers: must be ≥ 1, got 0"),
    ],
)
def test_bad_sweep_input_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    rc, out, err = _sweep(capsys, *argv, "--report", str(tmp_path / "r"))
    assert (rc, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("fleet-sim: ") and message in err, err
