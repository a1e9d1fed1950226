"""Manifest fetch and verification (lifecycle §5.10) and evidence signing (§5.12)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent_testlib import signed_manifest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_sim.fleetgen import ReleaseKit
from nixfleet.agent.evidence import EvidenceSigner
from nixfleet.agent.manifests import ManifestFetcher
from nixfleet.agent.statedir import ManifestCache
from nixfleet.core.agent_events import ManifestFailed, ManifestOk
from nixfleet.core.errors import PeerError, Unreachable
from nixfleet.core.trust import Trust, parse_trust
from nixfleet.core.wire import (
    ReportRequest,
    attestation_payload,
    report_evidence_payload,
)

NOW = datetime.now(UTC).replace(microsecond=0)
C1 = "1" * 32 + "-nixos-system-h1-1"


class Source:
    """A CP stand-in: serves what it holds, or raises like the transport does."""

    def __init__(self) -> None:
        self.docs: dict[str, tuple[bytes, bytes]] = {}
        self.down = False
        self.calls = 0

    async def fetch_manifest(self, rollout_id: str) -> tuple[bytes, bytes]:
        self.calls += 1
        if self.down:
            raise Unreachable("rollout manifest: https://cp (connect failed)")
        if rollout_id not in self.docs:
            raise PeerError("rollout manifest: https://cp (HTTP 404)")
        return self.docs[rollout_id]


def setup(tmp_path: Path, kit: ReleaseKit | None = None) -> tuple[Source, ManifestFetcher]:
    kit = kit or ReleaseKit()
    trust: Trust = parse_trust(kit.trust())
    source = Source()
    fetcher = ManifestFetcher(
        source=source, cache=ManifestCache(tmp_path), trust=lambda: trust, hostname="h1"
    )
    return source, fetcher


async def test_fetch_verify_cache_then_offline(tmp_path: Path) -> None:
    kit = ReleaseKit()
    source, fetcher = setup(tmp_path, kit)
    rid, raw, sig = signed_manifest(kit, {"h1": C1}, signed_at=NOW)
    source.docs[rid] = (raw, sig)
    assert await fetcher.fetch(rid, 0, NOW) == ManifestOk()
    assert (tmp_path / "rollouts" / f"{rid}.json").read_bytes() == raw
    assert (tmp_path / "rollouts" / f"{rid}.json.sig").read_bytes() == sig
    # The CP goes away: the cached copy is re-verified and used.
    source.down = True
    assert await fetcher.fetch(rid, 0, NOW + timedelta(minutes=5)) == ManifestOk()
    assert source.calls == 1


async def test_failures_map_to_the_three_kinds(tmp_path: Path) -> None:
    kit = ReleaseKit()
    source, fetcher = setup(tmp_path, kit)
    rid, raw, sig = signed_manifest(kit, {"h1": C1}, signed_at=NOW)

    missing = await fetcher.fetch(rid, 0, NOW)
    assert isinstance(missing, ManifestFailed) and missing.kind == "missing"
    source.down = True
    missing = await fetcher.fetch(rid, 0, NOW)
    assert isinstance(missing, ManifestFailed) and missing.kind == "missing"
    source.down = False

    # Signed by another release key.
    rogue_rid, rogue_raw, rogue_sig = signed_manifest(
        ReleaseKit(label="rogue"), {"h1": C1}, signed_at=NOW
    )
    source.docs[rogue_rid] = (rogue_raw, rogue_sig)
    bad = await fetcher.fetch(rogue_rid, 0, NOW)
    assert isinstance(bad, ManifestFailed) and bad.kind == "verify-failed"
    assert "bad-signature" in bad.reason

    # Stale: beyond the fixed 3600 s window + 60 s.
    old_rid, old_raw, old_sig = signed_manifest(
        kit, {"h1": C1}, signed_at=NOW - timedelta(seconds=3661)
    )
    source.docs[old_rid] = (old_raw, old_sig)
    stale = await fetcher.fetch(old_rid, 0, NOW)
    assert isinstance(stale, ManifestFailed) and stale.kind == "verify-failed"
    assert "stale" in stale.reason

    # Served under another id: the hash of the received bytes decides.
    other = "b" * 64
    source.docs[other] = (raw, sig)
    mismatch = await fetcher.fetch(other, 0, NOW)
    assert isinstance(mismatch, ManifestFailed) and mismatch.kind == "mismatch"

    # This host is not in the hostSet, or not at that wave.
    source.docs[rid] = (raw, sig)
    wrong_wave = await fetcher.fetch(rid, 1, NOW)
    assert isinstance(wrong_wave, ManifestFailed) and wrong_wave.kind == "mismatch"
    h2_rid, h2_raw, h2_sig = signed_manifest(kit, {"h2": C1}, signed_at=NOW)
    source.docs[h2_rid] = (h2_raw, h2_sig)
    absent = await fetcher.fetch(h2_rid, 0, NOW)
    assert isinstance(absent, ManifestFailed) and absent.kind == "mismatch"
    # Nothing refused was cached.
    assert not (tmp_path / "rollouts").exists() or not any(
        (tmp_path / "rollouts").glob(f"{h2_rid}*")
    )


async def test_corrupt_cache_is_fetched_again(tmp_path: Path) -> None:
    kit = ReleaseKit()
    source, fetcher = setup(tmp_path, kit)
    rid, raw, sig = signed_manifest(kit, {"h1": C1}, signed_at=NOW)
    ManifestCache(tmp_path).put(rid, raw.replace(b"h1", b"hX"), sig)
    source.docs[rid] = (raw, sig)
    assert await fetcher.fetch(rid, 0, NOW) == ManifestOk()
    assert source.calls == 1
    assert ManifestCache(tmp_path).get(rid) == (raw, sig)


async def test_a_slow_host_clock_keeps_the_cached_manifest(tmp_path: Path) -> None:
    kit = ReleaseKit()
    source, fetcher = setup(tmp_path, kit)
    rid, raw, sig = signed_manifest(kit, {"h1": C1}, signed_at=NOW)
    source.docs[rid] = (raw, sig)
    assert await fetcher.fetch(rid, 0, NOW) == ManifestOk()
    # The host clock then goes 10 minutes back: refused as a clock skew, the bytes
    # (good) stay cached, and the CP is not asked again.
    skewed = await fetcher.fetch(rid, 0, NOW - timedelta(minutes=10))
    assert isinstance(skewed, ManifestFailed) and skewed.kind == "clock-skew"
    assert skewed.reason.startswith("your clock is 600 s behind the manifest's signedAt")
    assert ManifestCache(tmp_path).get(rid) == (raw, sig)
    assert source.calls == 1


def test_evidence_signatures_verify_with_the_host_key() -> None:
    key = Ed25519PrivateKey.generate()
    signer = EvidenceSigner(key)
    report = ReportRequest(
        hostname="h1",
        agent_version="t",
        occurred_at=NOW,
        rollout="r" * 64,
        event="activation-failed",
        details={"phase": "switch-exit", "exit_code": 3, "stderr_tail": "boom"},
    )
    signed = signer.sign_report(report)
    assert signed.signature is not None
    key.public_key().verify(base64.b64decode(signed.signature), report_evidence_payload(signed))
    # Unsigned catalogue events, and no key at all, stay unsigned.
    started = ReportRequest(
        hostname="h1", agent_version="t", occurred_at=NOW, rollout=None,
        event="activation-started", details={"closure_hash": C1, "channel_ref": "x"},
    )  # fmt: skip
    assert signer.sign_report(started).signature is None
    assert EvidenceSigner(None).sign_report(report).signature is None
    att = signer.attest(
        hostname="h1", rollout_id="r" * 64, last_confirmed_at="2026-01-01T00:00:00Z"
    )
    assert att is not None
    key.public_key().verify(
        base64.b64decode(att),
        attestation_payload(
            hostname="h1", rollout_id="r" * 64, last_confirmed_at="2026-01-01T00:00:00Z"
        ),
    )
    assert EvidenceSigner(None).attest(hostname="h1", rollout_id="r", last_confirmed_at="x") is None
