"""The fault suite on the real local fleet (issue 9, acceptance): CP SIGKILLs during a
rollout, agent SIGKILLs mid-switch, a full disk on the CP's state dir (a tmpfs) and
restarts with the forge down, all drawn from one printed seed
(harness/faultcampaign.py says what is checked).

The CI run is short: 3 hosts, 2 releases, one CP kill and one agent kill per release,
the second release published on a full disk. `NIXFLEET_FAULT_SEED=<n>` replays a run;
`NIXFLEET_FAULT_CAMPAIGN_LONG=1` adds the longer campaign (benchmarks/fault_campaign.py
runs it with figures).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from harness.faultcampaign import CampaignConfig, CampaignFailure, run_campaign
from harness.nshost import namespaces_available

pytestmark = [
    pytest.mark.nix,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("nix-build") is None
        or shutil.which("sqlite3") is None
        or shutil.which("mount") is None
        or os.geteuid() != 0
        or not namespaces_available(),
        reason="needs nix, sqlite3, root (tmpfs mounts) and mount namespaces",
    ),
]


def seed() -> int:
    chosen = os.environ.get("NIXFLEET_FAULT_SEED")
    return int(chosen) if chosen else random.SystemRandom().randrange(2**32)


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


def test_fault_campaign_short(tmp_path: Path) -> None:
    campaign(tmp_path, CampaignConfig(seed=seed()))


@pytest.mark.skipif(
    not os.environ.get("NIXFLEET_FAULT_CAMPAIGN_LONG"), reason="NIXFLEET_FAULT_CAMPAIGN_LONG unset"
)
def test_fault_campaign_long(tmp_path: Path) -> None:
    campaign(
        tmp_path,
        CampaignConfig(
            seed=seed(),
            hosts=5,
            releases=6,
            cp_kills_per_release=3,
            agent_kills_per_release=2,
            disk_full_every=3,
            release_timeout_secs=240.0,
        ),
    )
