"""Where the CP finds CI's signed rollout manifests: `--rollouts-dir` holding
`<rolloutId>.json` + `.json.sig`. The CP only relays them; `CpService.manifest`
checks that the bytes hash to the id asked for, and agents verify the signature."""

from __future__ import annotations

import re
from pathlib import Path

_ROLLOUT_ID = re.compile(r"^[0-9a-f]{64}$")


class RolloutsDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, rollout_id: str) -> tuple[bytes, bytes] | None:
        if not _ROLLOUT_ID.match(rollout_id):
            return None
        body, sig = self.root / f"{rollout_id}.json", self.root / f"{rollout_id}.json.sig"
        try:
            return body.read_bytes(), sig.read_bytes()
        except FileNotFoundError:
            return None
