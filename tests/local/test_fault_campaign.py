"""The fault suite on the real local fleet (issue 9, acceptance): CP SIGKILLs during a
rollout, agent SIGKILLs mid-switch, a full disk on the CP's state dir (a tmpfs) and
restarts with the forge down, all drawn from one printed seed
(harness/faultcampaign.py says what is checked).

The CI run is short: 3 hosts, 2 releases, one CP kill and one agent kill per release,
the second release published on a full disk. `NIXFLEET_FAULT_SEED=<n>` replays a run; the
longer campaign with figures is `benchmarks/fault_campaign.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.faultcampaign import CampaignConfig, CampaignFailure, run_campaign

CI_SEEDS = (3577987740, 2217743209)
"""Seeds that once found a defect (an agent killed mid-switch, restarted while its switch
ran on). CI replays them so a landing does not hang on a dice roll; the benchmark
(`benchmarks/fault_campaign.py`) draws new ones."""


def seeds() -> tuple[int, ...]:
    chosen = os.environ.get("NIXFLEET_FAULT_SEED")
    return (int(chosen),) if chosen else CI_SEEDS


def campaign(tmp_path: Path, config: CampaignConfig) -> None:
    print(f"fault campaign seed={config.seed} (replay: NIXFLEET_FAULT_SEED={config.seed})")
    failure = None
    try:
        report = run_campaign(tmp_path / "fleet", config)
    except CampaignFailure as exc:
        failure = f"{exc}\n(replay: NIXFLEET_FAULT_SEED={config.seed})"
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    print("\n".join(report.lines()))
    assert len(report.releases) == config.releases
    assert report.cp_kills >= config.releases, report.lines()  # the full-disk one included


@pytest.mark.parametrize("seed", seeds())
def test_fault_campaign_short(tmp_path: Path, seed: int) -> None:
    campaign(tmp_path, CampaignConfig(seed=seed))
