"""Simulator scale benchmark: a clean three-wave rollout at 60 s polling.

Prints wall time, simulated events/s, simulated seconds per wall second and the
peak RSS of a fresh process per fleet size (each size runs in its own child so the
RSS figure is that run's own).

    python benchmarks/sim_scale.py                 # 1,000 and 10,000 hosts
    python benchmarks/sim_scale.py --hosts 1000 --seed 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _one(hosts: int, seed: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    from fleet_sim.checkers import CLEAN_RUN, passed, run_checkers
    from fleet_sim.world import SimConfig, World

    started = time.perf_counter()
    world = World(SimConfig(hosts=hosts, waves=3, poll_secs=60, seed=seed)).run()
    wall = time.perf_counter() - started
    verdicts = run_checkers(world.as_run(), CLEAN_RUN)
    out.put({
        "hosts": hosts,
        "wall_s": round(wall, 2),
        "events": len(world.history.events),
        "events_per_s": round(len(world.history.events) / wall),
        "sim_s": world.env.now,
        "settled_at_s": world.settled_at,
        "sim_s_per_wall_s": round(world.env.now / wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "checkers_pass": passed(verdicts),
        "trace": world.history.trace_hash()[:16],
    })


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), platform.processor())
    print(f"# machine: {mp.cpu_count()} cores, {cpu}, Python {platform.python_version()}")
    print(f"{'hosts':>7} {'wall s':>8} {'events':>8} {'events/s':>9} {'sim s':>8} "
          f"{'sim s/wall s':>12} {'RSS MB':>7} {'checks':>7}")
    for hosts in args.hosts:
        queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
        proc = ctx.Process(target=_one, args=(hosts, args.seed, queue))
        proc.start()
        row = queue.get()
        proc.join()
        if args.json:
            print(json.dumps(row))
        print(f"{row['hosts']:>7} {row['wall_s']:>8} {row['events']:>8} "
              f"{row['events_per_s']:>9} {row['sim_s']:>8.0f} {row['sim_s_per_wall_s']:>12} "
              f"{row['peak_rss_mb']:>7} {'pass' if row['checkers_pass'] else 'FAIL':>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
