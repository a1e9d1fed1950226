"""The sample-fleet job: sign a release, verify it as the CP would, and show what the
reconciler decides at each stage of a two-wave rollout. Prints a readable report.

Everything runs on the production cores (verify, manifest projection, reconcile).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from typing import TextIO

from nixfleet.core.actions import dump_action
from nixfleet.core.observed import HostObservation, Observed, Rollout
from nixfleet.core.reconcile import reconcile
from nixfleet.core.rollout_state import HostRolloutState
from nixfleet.core.snapshot import snapshot_from_verified
from nixfleet.core.trust import parse_trust
from nixfleet.core.verify import verify_artifact

from .fleetgen import ChannelDecl, HostDecl, ReleaseKit, ci_commit, fake_closure, fleet_doc

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
WAVES = (("web-1", "web-2"), ("db-1", "db-2", "db-3"))


def _stage(
    name: str,
    snap_fleet: object,
    rid: str,
    states: dict[str, HostRolloutState],
    current_wave: int,
    out: TextIO,
    *,
    healthy_since: datetime | None = None,
    rolled: bool = True,
) -> None:
    hosts = [h for w in WAVES for h in w]
    observed = Observed(
        channel_refs={"stable": rid},
        last_rolled_refs={"stable": rid} if rolled else {},
        host_state={h: HostObservation(online=True) for h in hosts},
        active_rollouts=(
            Rollout(
                id=rid,
                channel="stable",
                target_ref=rid,
                state="Executing",
                current_wave=current_wave,
                host_states=states,
                last_healthy_since={h: healthy_since for h in states if healthy_since},
            ),
        )
        if rolled
        else (),
    )
    actions = reconcile(snap_fleet, observed, NOW)  # type: ignore[arg-type]
    out.write(f"\n## {name}\n")
    if not actions:
        out.write("  (no actions)\n")
    for a in actions:
        d = dump_action(a)
        kind = d.pop("action")
        detail = " ".join(f"{k}={v}" for k, v in d.items() if k != "rollout")
        out.write(f"  {kind:<16} {detail}\n")


def run(out: TextIO = sys.stdout) -> int:
    kit = ReleaseKit()
    hosts = {h: HostDecl(closure=fake_closure(h, 2)) for w in WAVES for h in w}
    doc = fleet_doc(
        hosts,
        signed_at=NOW - timedelta(minutes=5),
        ci_commit=ci_commit(2),
        channels={"stable": ChannelDecl(waves=WAVES, soak_minutes=10)},
    )
    raw, sig = kit.sign(doc)
    trust = parse_trust(kit.trust())
    verified = verify_artifact(raw, sig, trust.ci_release_key, now=NOW, window_secs=86400)
    snap = snapshot_from_verified(verified, source="sample")
    rid = snap.rollout_ids["stable"]
    out.write("# nixfleet sample fleet\n\n")
    out.write(f"release    ci_commit={snap.ci_commit} signed_at={snap.signed_at_text}\n")
    key = verified.key
    out.write(
        f"signature  verified with the {key.role} {key.key.algorithm} key ({len(sig)} raw bytes)\n"
    )
    out.write(f"rollout    stable -> {rid}\n")
    out.write(f"hosts      {len(hosts)} in waves {[list(w) for w in WAVES]}\n")
    fleet = snap.fleet
    wave0 = WAVES[0]
    _stage("new release: the CP opens a rollout", fleet, rid, {}, 0, out, rolled=False)
    _stage("wave 0 dispatches, wave 1 waits for promotion", fleet, rid, {}, 0, out)
    _stage(
        "wave 0 healthy for 15 min (soak 10 min)",
        fleet, rid, {h: "Healthy" for h in wave0}, 0, out,
        healthy_since=NOW - timedelta(minutes=15),
    )
    _stage("wave 0 soaked: promote", fleet, rid, {h: "Soaked" for h in wave0}, 0, out)
    _stage(
        "wave 1: one host failed under rollback-and-halt",
        fleet, rid,
        {**{h: "Soaked" for h in wave0}, "db-1": "Failed", "db-2": "Healthy"}, 1, out,
        healthy_since=NOW,
    )
    _stage(
        "every host soaked: converge",
        fleet, rid, {h: "Soaked" for w in WAVES for h in w}, 1, out,
    )
    flipped = bytearray(raw)
    flipped[50] ^= 1
    try:
        verify_artifact(bytes(flipped), sig, trust.ci_release_key, now=NOW, window_secs=86400)
        out.write("\ntampered artifact: ACCEPTED (bug)\n")
        return 1
    except Exception as exc:
        out.write(f"\ntampered artifact (byte 50 flipped): rejected: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
