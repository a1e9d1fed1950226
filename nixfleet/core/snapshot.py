"""The CP's verified-fleet snapshot, and the rule that it never goes backwards.

Seed 000 "stair-steps backwards": the build-time artifact is always one release
behind (CI commits the release after building the closure). Priming from it, or
letting any source replace a newer snapshot, walked the CP back one release per
restart. Whatever the source, a snapshot is replaced only by one signed at the same
instant or later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from .canonical import sha256_hex
from .fleet import Fleet, parse_fleet
from .manifest import RolloutManifest, project_manifests, rollout_id
from .verify import Verified

SOURCE_UPSTREAM = "upstream"
SOURCE_BUILD_TIME = "build-time"


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetSnapshot:
    fleet: Fleet
    canonical: bytes
    signed_at: datetime
    signed_at_text: str
    fleet_hash: str
    """sha256 hex of the canonical fleet bytes (`fleetResolvedHash`)."""
    manifests: Mapping[str, RolloutManifest]
    rollout_ids: Mapping[str, str]
    """Channel → rolloutId, projected from this fleet (lifecycle §3.7)."""
    source: str

    @property
    def ci_commit(self) -> str | None:
        return self.fleet.meta.ci_commit

    def manifest_by_id(self, rid: str) -> RolloutManifest | None:
        for channel, known in self.rollout_ids.items():
            if known == rid:
                return self.manifests[channel]
        return None


def snapshot_from_verified(verified: Verified, *, source: str) -> FleetSnapshot:
    fleet = parse_fleet(verified.value, source="fleet.resolved.json")
    manifests = project_manifests(fleet, verified.canonical)
    return FleetSnapshot(
        fleet=fleet,
        canonical=verified.canonical,
        signed_at=verified.signed_at,
        signed_at_text=verified.signed_at_text,
        fleet_hash=sha256_hex(verified.canonical),
        manifests=manifests,
        rollout_ids={ch: rollout_id(m) for ch, m in manifests.items()},
        source=source,
    )


def replaces(current: FleetSnapshot | None, signed_at: datetime, *, source: str) -> bool:
    """An artifact signed at `signed_at` replaces the current snapshot unless it was
    signed earlier. On a tie the baked (build-time) artifact never displaces what is
    served: the CP re-offers it every tick, and two artifacts signed in the same second
    would otherwise take turns."""
    if current is None or signed_at != current.signed_at:
        return current is None or signed_at > current.signed_at
    return source != SOURCE_BUILD_TIME
