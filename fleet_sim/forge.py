"""The forge and CI: releases signed for real, published at simulated instants.

CI's ordering quirk (seed 000): a host's closure is built before the `[skip ci]`
release commit lands, so the artifact baked into the CP's own closure is always the
release before the newest one; that is the CP's build-time fallback here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from .fleetgen import (
    TAMPER_OFFSETS,
    ChannelDecl,
    HostDecl,
    ReleaseKit,
    ci_commit,
    fleet_doc,
    flip,
    revocations_doc,
)


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
    revocations: tuple[bytes, bytes] | None = None
    """CI's signed revocations sidecar (bytes, signature); None: the fleet has none and
    the CP is run without `--revocations-artifact-url`."""

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

    def publish_revocations(
        self, entries: Mapping[str, tuple[datetime, str]], *, signed_at: datetime
    ) -> None:
        """Sign the revocations sidecar: hostname → (notBefore, reason)."""
        doc = revocations_doc(
            {h: nb for h, (nb, _) in entries.items()},
            signed_at=signed_at,
            ci_commit=ci_commit(999),
            reasons={h: why for h, (_, why) in entries.items()},
        )
        self.revocations = self.kit.sign(doc)

    def tamper(self, what: str) -> None:
        """Flip one byte of what the forge serves of the newest release: its artifact or
        signature, or its rollout manifests' payload or signature (`TAMPER_OFFSETS`); or
        `manifest-swap`: serve the installed release's manifests under its rollout ids."""
        latest = self.releases[-1]
        if what == "manifest-swap":
            for channel, rid in latest.rollout_ids.items():
                self.manifests[rid] = self.manifests[self.releases[0].rollout_ids[channel]]
            return
        offset = TAMPER_OFFSETS[what]
        if what == "artifact":
            self.releases[-1] = replace(latest, raw=flip(latest.raw, offset))
        elif what == "artifact-signature":
            self.releases[-1] = replace(latest, sig=flip(latest.sig, offset))
        for rid in latest.rollout_ids.values():
            body, sig = self.manifests[rid]
            if what == "manifest-payload":
                self.manifests[rid] = (flip(body, offset), sig)
            elif what == "manifest-signature":
                self.manifests[rid] = (body, flip(sig, offset))

    @property
    def latest(self) -> Release | None:
        return self.releases[-1] if self.releases else None

    @property
    def build_time(self) -> Release | None:
        """What the CP's closure has baked in: one release behind the newest."""
        return self.releases[-2] if len(self.releases) >= 2 else None

    def manifest(self, rid: str) -> tuple[bytes, bytes] | None:
        return self.manifests.get(rid)
