"""Reference harness `harness-manifest-tamper-rejection`: a rollout manifest is bound
to its rolloutId, the SHA-256 of its canonical bytes, and verified over the bytes
received.

Three releases whose manifest CI's forge serves tampered: the installed release's
manifest (validly signed) renamed to the new rollout id, a payload byte flipped, a
signature byte flipped. Each is dispatched; each real agent that fetches the manifest
gets it refused (the CP relays only a manifest that hashes to its id, the agent
verifies the signature and the id again) and reports why, and no host switches.
A host that refused one rollout's manifest is offered the next only once its confirm
window has run out (30 s on `local`), so the local run takes about a minute and a half.
"""

from harness.fleet import Fleet, Scenario, Shape, expect
from harness.refusals import activated, nothing_switched, reports, rollout_of
from nixfleet.core.wire import MANIFEST_MISMATCH, MANIFEST_MISSING, MANIFEST_VERIFY_FAILED

REFUSALS = (MANIFEST_MISSING, MANIFEST_VERIFY_FAILED, MANIFEST_MISMATCH)
CASES = (
    ("manifest-swap", "another release's manifest renamed to its rollout id"),
    ("manifest-payload", "a flipped payload byte"),
    ("manifest-signature", "a flipped signature byte"),
)


def refused(fleet: Fleet, tamper: str, what: str) -> None:
    n = fleet.publish(tamper=tamper)
    rid = rollout_of(fleet, n)
    closures = {h: fleet.target(h) for h in fleet.hosts}
    # A host refused the previous rollout's manifest holds that dispatch until its
    # confirm window ends; then the CP offers this one.
    fleet.wait_until(
        lambda: len(reports(fleet, REFUSALS, rid)) == len(fleet.hosts),
        fleet.confirm_window + fleet.polls(6),
        f"every agent to refuse release {n}'s manifest ({what})",
    )
    switched = activated(fleet, closures)
    expect(not switched, f"no host to switch to release {n} ({what})", switched)


def steps(fleet: Fleet) -> None:
    for tamper, what in CASES:
        refused(fleet, tamper, what)
    fleet.sleep(fleet.polls(2))


SCENARIO = Scenario(
    id="harness-manifest-tamper-rejection",
    source="reference harness scenario harness-manifest-tamper-rejection",
    summary="manifest with a flipped payload byte, a flipped signature byte, or renamed "
    "to another rollout id: every agent refuses it, no host switches",
    shape=Shape(hosts=20, local_hosts=1, seed=16),
    steps=steps,
    checks=[nothing_switched],
    mutant="rollout-id-unbound",
)
