"""Fault campaign benchmark on the real local fleet (issue 9's fault suite, long mode).

The same campaign as tests/local/test_fault_campaign.py (harness/faultcampaign.py:
CP SIGKILLs during rollouts, agent SIGKILLs mid-switch, a full disk on the CP's state
dir, restarts with the forge down; every rule checked as it goes), with more hosts,
releases and kills. Prints the seed first, then per release the convergence time,
the kills that landed and the activations per host, and totals. A broken rule stops
the run with a line naming the seed (exit 1, work dir kept); `--seed` replays it.

Needs root (a tmpfs is mounted on the CP's state dir and unmounted at the end), nix
and sqlite3. Every process is stopped by its PID at the end, Ctrl-C included.

    python benchmarks/fault_campaign.py                     # 5 hosts, 6 releases
    python benchmarks/fault_campaign.py --hosts 3 --releases 2 --cp-kills 1 --agent-kills 1
    python benchmarks/fault_campaign.py --seed 1234 --keep   # replay, keep the logs
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.faultcampaign import CampaignConfig, CampaignFailure, run_campaign


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--seed", type=int, help="replay this seed (default: a random one)")
    p.add_argument("--hosts", type=int, default=5)
    p.add_argument("--releases", type=int, default=6)
    p.add_argument("--cp-kills", type=int, default=3, help="CP SIGKILLs per release")
    p.add_argument("--agent-kills", type=int, default=2, help="agent SIGKILLs per release")
    p.add_argument(
        "--disk-full-every", type=int, default=3, help="every Nth release on a full disk (0: never)"
    )
    p.add_argument("--switch-delay", type=float, default=2.0, help="seconds each switch runs")
    p.add_argument("--confirm-window", type=int, default=60, help="CP --confirm-deadline-secs")
    p.add_argument("--release-timeout", type=float, default=240.0)
    p.add_argument("--workdir", type=Path, help="work here and keep it (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temp work dir (logs)")
    args = p.parse_args(argv)
    if args.hosts < 1 or args.releases < 1 or args.cp_kills < 0 or args.agent_kills < 0:
        p.error("--hosts and --releases must be ≥ 1, kill counts ≥ 0")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print(
            "fault_campaign: needs root (it mounts a tmpfs on the CP's state dir)", file=sys.stderr
        )
        return 2
    missing = [t for t in ("nix-build", "sqlite3", "mount") if shutil.which(t) is None]
    if missing:
        print(f"fault_campaign: missing on PATH: {', '.join(missing)}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    config = CampaignConfig(
        seed=seed,
        hosts=args.hosts,
        releases=args.releases,
        cp_kills_per_release=args.cp_kills,
        agent_kills_per_release=args.agent_kills,
        disk_full_every=args.disk_full_every,
        switch_delay_secs=args.switch_delay,
        confirm_deadline_secs=args.confirm_window,
        release_timeout_secs=args.release_timeout,
    )
    print(f"seed={seed} (replay: --seed {seed}) config={config}", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: every process by PID
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fault-campaign-"))
    keep = args.keep or args.workdir is not None
    try:
        report = run_campaign(workdir / "fleet", config, say=lambda s: print(s, flush=True))
    except CampaignFailure as exc:
        keep = True  # the logs are the evidence
        print(f"FAILED {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; processes stopped", file=sys.stderr)
        return 130
    finally:
        if keep:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print("\n".join(report.lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
