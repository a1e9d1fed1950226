"""Reference harness `harness-corruption-rejection`: tampered bytes are rejected.

The fixture (the installed release) verifies within the CP's 30-day window. Then CI's
forge serves a release with one byte flipped: at offset 10 of the fleet artifact's
signature, at offset 50 of the artifact: the CP refuses each for its signature, keeps its
snapshot and says why. A release whose rollout manifest signature has byte 10 flipped
passes the CP (it only relays CI's manifest) and is refused by every real agent that
fetches it: a signed `manifest-verify-failed` report, no switch. No host ever runs
anything tampered.
"""

from harness.fleet import Fleet, Scenario, Shape, expect
from harness.refusals import (
    activated,
    nothing_switched,
    reports,
    rollout_of,
    served_signed_at,
    wait_refused_by_cp,
)
from nixfleet.core.wire import MANIFEST_VERIFY_FAILED


def cp_refuses(fleet: Fleet, tamper: str, what: str) -> None:
    before = served_signed_at(fleet)
    n = fleet.publish(tamper=tamper)
    wait_refused_by_cp(fleet, n, "bad-signature", f"release {n} with {what}")
    expect(served_signed_at(fleet) == before, f"the CP to keep serving signed_at {before}")


def agents_refuse_manifest(fleet: Fleet) -> None:
    n = fleet.publish(tamper="manifest-signature")
    rid = rollout_of(fleet, n)
    closures = {h: fleet.target(h) for h in fleet.hosts}

    def refused() -> dict[str, dict[str, object]]:
        return reports(fleet, [MANIFEST_VERIFY_FAILED], rid)

    fleet.wait_until(
        lambda: len(refused()) == len(fleet.hosts),
        fleet.polls(6),
        f"every agent to refuse release {n}'s manifest (signature byte 10 flipped)",
    )
    reasons = {h: str(r.get("reason", "")) for h, r in refused().items()}
    wrong = {h: r for h, r in reasons.items() if not r.startswith("bad-signature:")}
    expect(not wrong, "each agent to refuse the manifest for its signature", wrong)
    fleet.sleep(fleet.polls(2))
    switched = activated(fleet, closures)
    expect(not switched, f"no host to switch to release {n}", switched)


def steps(fleet: Fleet) -> None:
    # The fixture verifies: the CP serves the installed release's snapshot.
    served_signed_at(fleet)
    cp_refuses(fleet, "artifact-signature", "a flipped byte at signature offset 10")
    cp_refuses(fleet, "artifact", "a flipped byte at artifact offset 50")
    agents_refuse_manifest(fleet)


SCENARIO = Scenario(
    id="harness-corruption-rejection",
    source="reference harness scenario harness-corruption-rejection",
    summary="flipped artifact/signature bytes: CP keeps its snapshot; flipped manifest "
    "signature: every agent refuses it, no host switches",
    shape=Shape(hosts=20, local_hosts=1, seed=11),
    steps=steps,
    checks=[nothing_switched],
    mutant="signature-content-ignored",
)
