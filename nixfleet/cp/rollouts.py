"""Where the CP finds CI's signed rollout manifests: `--rollouts-dir` holding
`<rolloutId>.json` + `.json.sig`. The CP only relays them; `CpService.manifest`
checks that the bytes hash to the id asked for, and agents verify the signature."""

from __future__ import annotations

from pathlib import Path

from nixfleet.core.idents import ROLLOUT_ID


class RolloutsDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, rollout_id: str) -> tuple[bytes, bytes] | None:
        if not ROLLOUT_ID.test(rollout_id):
            return None
        body, sig = self.root / f"{rollout_id}.json", self.root / f"{rollout_id}.json.sig"
        try:
            return body.read_bytes(), sig.read_bytes()
        except FileNotFoundError:
            return None
