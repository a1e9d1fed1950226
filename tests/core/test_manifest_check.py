"""The one manifest check the agent daemon and the simulated hosts share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleet_sim.fleetgen import ChannelDecl, HostDecl, ReleaseKit, ci_commit, fake_closure, fleet_doc
from nixfleet.core.agent_events import ManifestFailed, ManifestOk
from nixfleet.core.manifest_check import check_manifest
from nixfleet.core.trust import parse_trust

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
KIT = ReleaseKit()
TRUST = parse_trust(KIT.trust())
HOSTS = {h: HostDecl(closure=fake_closure(h, 1)) for h in ("a", "b")}
RAW, _ = KIT.sign(
    fleet_doc(
        HOSTS,
        signed_at=NOW - timedelta(minutes=5),
        ci_commit=ci_commit(1),
        channels={"stable": ChannelDecl(waves=[["a"], ["b"]])},
    )
)
RID, BODY, SIG = KIT.sign_manifests(RAW)["stable"]


def check(
    body: bytes = BODY,
    sig: bytes | None = SIG,
    *,
    rid: str = RID,
    host: str = "b",
    wave: int = 1,
    now: datetime = NOW,
) -> ManifestOk | ManifestFailed:
    return check_manifest(body, sig, TRUST, rollout_id=rid, hostname=host, wave_index=wave, now=now)


def test_listed_host_at_its_wave_passes() -> None:
    assert check() == ManifestOk()
    assert check(host="a", wave=0) == ManifestOk()


def test_failures_are_named_by_kind() -> None:
    assert isinstance(r := check(sig=None), ManifestFailed) and r.kind == "missing"
    flipped = bytes([SIG[0] ^ 1]) + SIG[1:]
    assert isinstance(r := check(sig=flipped), ManifestFailed) and r.kind == "verify-failed"
    late = NOW + timedelta(hours=2)  # the fixed 3600 s window, plus slack
    assert isinstance(r := check(now=late), ManifestFailed) and r.kind == "verify-failed"
    assert isinstance(r := check(rid="0" * 64), ManifestFailed) and r.kind == "mismatch"
    assert isinstance(r := check(host="b", wave=0), ManifestFailed) and r.kind == "mismatch"
    assert isinstance(r := check(host="zz", wave=0), ManifestFailed) and r.kind == "mismatch"
