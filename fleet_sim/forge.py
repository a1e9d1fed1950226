"""The forge and CI: releases signed for real, published at simulated instants.

CI's ordering quirk (seed 000): a host's closure is built before the `[skip ci]`
release commit lands, so the artifact baked into the CP's own closure is always the
release before the newest one; that is the CP's build-time fallback here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from .fleetgen import ChannelDecl, HostDecl, ReleaseKit, ci_commit, fleet_doc


@dataclass(frozen=True, slots=True)
class Release:
    number: int
    raw: bytes
    sig: bytes
    signed_at: datetime
    rollout_ids: Mapping[str, str]


@dataclass
class SimForge:
    kit: ReleaseKit = field(default_factory=ReleaseKit)
    releases: list[Release] = field(default_factory=list)
    manifests: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    up: bool = True
    fault: str | None = None
    """How the forge misbehaves while up (harness `forge_fault` modes): "down" (503),
    "hang" (no answer: the fetch times out), "unauthorized" (401); None: healthy."""

    def publish(
        self,
        hosts: Mapping[str, HostDecl],
        *,
        signed_at: datetime,
        channels: Mapping[str, ChannelDecl] | None = None,
        on_health_failure: str = "rollback-and-halt",
    ) -> Release:
        number = len(self.releases)  # release 0 is what the hosts run at start
        doc = fleet_doc(
            hosts,
            signed_at=signed_at,
            ci_commit=ci_commit(number),
            channels=channels,
            on_health_failure=on_health_failure,
        )
        raw, sig = self.kit.sign(doc)
        ids: dict[str, str] = {}
        for channel, (rid, body, manifest_sig) in self.kit.sign_manifests(raw).items():
            self.manifests[rid] = (body, manifest_sig)
            ids[channel] = rid
        release = Release(number, raw, sig, signed_at, ids)
        self.releases.append(release)
        return release

    @property
    def latest(self) -> Release | None:
        return self.releases[-1] if self.releases else None

    @property
    def build_time(self) -> Release | None:
        """What the CP's closure has baked in: one release behind the newest."""
        return self.releases[-2] if len(self.releases) >= 2 else None

    def manifest(self, rid: str) -> tuple[bytes, bytes] | None:
        return self.manifests.get(rid)
