"""Seed 000 "Verify fails with BadSignature…": a TPM-held P-256 release key.

TPM2_Sign emits a high-s signature (s > n/2) about half the time; a verifier that
insists on low-s refuses those, so about every other tick fails with `BadSignature`.
The fix normalises s before verifying: (r, s) and its twin (r, n − s) both verify.

On `tpm` every signature is TPM2_Sign's own (`Fleet.release_signer()`, the fleet's
release key in a swtpm or a lab TPM); on `sim` and `local` a software key signs the
same way, s left as drawn:

1. 200 raw P-256 signatures, s left as the signer drew it (as a TPM does): all verify
   with the production verifier, high-s share 30–70 % (the path is exercised), each
   one's twin verifies too, a signature over other bytes is refused; < 1 s each.
2. A real rollout whose fleet artifacts and rollout manifests are all signed high-s
   (`Shape.release_key="ecdsa-p256"`; on `tpm`, high-s draws of the TPM): the CP
   verifies and serves it, every agent verifies its manifest (served with a high s)
   and the fleet converges.
"""

import random
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from fleet_sim.checkers import CLEAN_RUN
from fleet_sim.fleetgen import p256_twin, seeded_key
from harness.byhand import served
from harness.fleet import Fleet, NotAvailable, Scenario, Shape, StepTimeout, expect
from harness.refusals import poll_failures, released_at, rollout_of
from harness.steps import wait_settled
from nixfleet.core.signing import (
    P256_ORDER,
    PublicKey,
    parse_public_key,
    public_key_of,
    verify_signature,
)

SIGNATURES = 200
HIGH_SHARE = (0.30, 0.70)
MAX_VERIFY_SECS = 1.0


def tpm_sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """Raw r‖s with s as drawn, never normalised: what TPM2_Sign hands back."""
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def is_high(sig: bytes) -> bool:
    return int.from_bytes(sig[32:], "big") > P256_ORDER // 2


def raw_signer(fleet: Fleet) -> tuple[Callable[[bytes], bytes], PublicKey]:
    """The fleet's TPM where it has one (`tpm`), else a software key signing alike."""
    try:
        device = fleet.release_signer()
    except NotAvailable:
        key = seeded_key("ecdsa-p256", "tpm")
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return (lambda message: tpm_sign(key, message)), public_key_of(key)
    entry = device.public_key_json()
    return device.sign, parse_public_key(entry["algorithm"], entry["public"])


def verifies_high_s(fleet: Fleet) -> None:
    sign, public = raw_signer(fleet)
    rng = random.Random(fleet.shape.seed)
    high, slowest, refused = 0, 0.0, []
    for i in range(SIGNATURES):
        message = rng.randbytes(64)
        sig = sign(message)
        high += is_high(sig)
        for label, candidate in (("signature", sig), ("twin", p256_twin(sig))):
            started = time.perf_counter()
            if not verify_signature(public, message, candidate):
                refused.append(f"#{i} {label} ({'high' if is_high(candidate) else 'low'}-s)")
            slowest = max(slowest, time.perf_counter() - started)
        expect(
            not verify_signature(public, message[::-1], sig),
            f"signature #{i} over other bytes to be refused",
        )
    expect(
        not refused,
        f"all {SIGNATURES} TPM-style P-256 signatures and their (r, n−s) twins to verify",
        f"{len(refused)} refused: {refused[:4]}",
    )
    share = high / SIGNATURES
    expect(
        HIGH_SHARE[0] <= share <= HIGH_SHARE[1],
        f"a high-s share within {HIGH_SHARE} (the normalising path exercised)",
        f"{share:.2f}",
    )
    expect(slowest < MAX_VERIFY_SECS, f"each verify under {MAX_VERIFY_SECS} s", f"{slowest:.3f} s")


def rollout_signed_high_s(fleet: Fleet) -> None:
    n = fleet.release()
    try:
        fleet.wait_until(lambda: served(fleet, n), fleet.polls(3), f"release {n}")
    except StepTimeout:
        seen = poll_failures(fleet, released_at(fleet, n))
        expect(False, f"the CP to verify release {n}, signed high-s with P-256", seen[:1])
    host = fleet.hosts[0]
    reply = fleet.call("GET", f"/v1/rollouts/{rollout_of(fleet, n)}/sig", as_=host)
    expect(reply.status == 200, "the CP to serve the rollout manifest's signature", reply.line())
    expect(is_high(reply.body), "the manifest signature served to be high-s", reply.body.hex())
    wait_settled(fleet, polls=30, then=1)


def steps(fleet: Fleet) -> None:
    verifies_high_s(fleet)
    rollout_signed_high_s(fleet)


SCENARIO = Scenario(
    id="ecdsa-high-s-tpm",
    source='000 "Verify fails with BadSignature…"; `crates/nixfleet-reconciler/src/verify.rs`',
    summary="200 TPM-style P-256 signatures (≈half high-s) and their twins verify; a "
    "rollout signed all high-s is served by the CP and converges",
    shape=Shape(hosts=20, local_hosts=1, seed=14, release_key="ecdsa-p256"),
    steps=steps,
    checks=CLEAN_RUN,
    mutant="strict-low-s-verifier",
    backends=frozenset({"tpm", "qemu", "local", "sim"}),
)
