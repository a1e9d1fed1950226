"""Reference harness `harness-signed-roundtrip`: CI's signed bytes reach the agent
byte-exact, and the agent verifies them.

A release's rollout manifest and its raw 64-byte signature travel forge → CP → agent.
Every real agent verifies the manifest it fetched (CI's release key from its trust,
the id recomputed from the received bytes) before it switches, so the fleet converges
with no `manifest-*` refusal. Fetched as a host fetches them, the CP's bytes hash to
the rollout id and the signature is exactly 64 bytes and verifies against the fleet's
test trust at signedAt + 1 h. Guards a responder that cut signatures to 54 bytes.
"""

from datetime import timedelta

from fleet_sim.checkers import CLEAN_RUN
from fleet_sim.fleetgen import ReleaseKit
from harness.fleet import Fleet, Scenario, Shape, expect
from harness.refusals import reports, rollout_of
from harness.steps import wait_settled
from nixfleet.core.canonical import load_json
from nixfleet.core.errors import VerifyError
from nixfleet.core.signing import SIGNATURE_LEN, public_key_json
from nixfleet.core.timeutil import parse_instant
from nixfleet.core.trust import Slot, TrustKey
from nixfleet.core.verify import verify_rollout_manifest
from nixfleet.core.wire import MANIFEST_MISMATCH, MANIFEST_MISSING, MANIFEST_VERIFY_FAILED

REFUSALS = (MANIFEST_VERIFY_FAILED, MANIFEST_MISMATCH, MANIFEST_MISSING)


def agents_verify(fleet: Fleet, rid: str) -> None:
    fleet.wait_until(
        lambda: fleet.converged() or bool(reports(fleet, REFUSALS, rid)),
        fleet.polls(20),
        "every agent to verify its manifest and switch",
    )
    refused = {h: r.get("reason") for h, r in reports(fleet, REFUSALS, rid).items()}
    expect(not refused, "every agent to verify the manifest and signature the CP relayed", refused)


def served_byte_exact(fleet: Fleet, rid: str) -> None:
    host = fleet.hosts[0]
    body = fleet.call("GET", f"/v1/rollouts/{rid}", as_=host)
    sig = fleet.call("GET", f"/v1/rollouts/{rid}/sig", as_=host)
    expect(body.status == sig.status == 200, "the manifest and /sig served", sig.line())
    expect(
        len(sig.body) == SIGNATURE_LEN,
        f"a raw {SIGNATURE_LEN}-byte signature served",
        f"{len(sig.body)} bytes",
    )
    # The fleets' CI key is the harness's seeded test key (`ReleaseKit`).
    trust = Slot(current=TrustKey(**public_key_json(ReleaseKit().release_key)))
    signed_at = parse_instant(load_json(body.body)["meta"]["signedAt"])
    try:
        verify_rollout_manifest(
            body.body, sig.body, trust, now=signed_at + timedelta(hours=1), rollout_id=rid
        )
    except VerifyError as exc:
        expect(False, "the served manifest to verify under its rollout id", exc)


def steps(fleet: Fleet) -> None:
    rid = rollout_of(fleet, fleet.release())
    agents_verify(fleet, rid)
    served_byte_exact(fleet, rid)
    wait_settled(fleet, polls=20, then=1)


SCENARIO = Scenario(
    id="harness-signed-roundtrip",
    source="reference harness scenario harness-signed-roundtrip",
    summary="manifest + 64-byte signature relayed byte-exact; every agent verifies and "
    "converges, no manifest refusal",
    shape=Shape(hosts=20, local_hosts=1, seed=15),
    steps=steps,
    checks=CLEAN_RUN,
    mutant="manifest-signature-cut",
    backends=frozenset({"qemu", "local", "sim"}),
)
