"""`cookbook-org-root-rotation`: seed 002's "Rotate the org root key". The old key moves
to `orgRootKey.previous`, the new one becomes `current`, CI re-signs, the CP is
redeployed; tokens of both keys enroll during the grace window; once `previous` is null
and the CP redeployed again, only the new key's tokens do. trust.json comes with the
CP's closure: until the redeploy a new-key token is refused."""

from harness.enrollsteps import enroll
from harness.fleet import Fleet, Scenario, Shape, expect

OLD, NEW = 0, 1
"""Org root key generations: the fleet's first key and the one rotated in."""


def enrolls(fleet: Fleet, host: str, key: int) -> int:
    """The status of a fresh token of org root key `key`."""
    return enroll(fleet, host, fleet.mint_token(host, org_key=key)).status


def check(fleet: Fleet, host: str, when: str, old: int, new: int) -> None:
    seen = {"old key": enrolls(fleet, host, OLD), "new key": enrolls(fleet, host, NEW)}
    want = {"old key": old, "new key": new}
    expect(seen == want, f"{when}: tokens enroll {want}", seen)


def redeploy(fleet: Fleet, current: int, previous: int | None) -> None:
    """The CP's new closure: its trust.json, and the unit restarted."""
    fleet.set_org_root(current, previous)
    fleet.cp.stop()
    fleet.cp.start()


def steps(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    check(fleet, host, "new key minted, CP not redeployed (trust.json is build-time)", 200, 401)
    redeploy(fleet, NEW, OLD)
    check(fleet, host, "grace window (previous = old key)", 200, 200)
    redeploy(fleet, NEW, None)
    check(fleet, host, "previous = null, CP redeployed", 401, 200)


SCENARIO = Scenario(
    id="cookbook-org-root-rotation",
    source='002 "Rotate the org root key"',
    summary="org root rotation: both keys enroll in grace, only the new one after previous "
    "= null and a redeploy; nothing changes before a redeploy",
    shape=Shape(hosts=1, local_hosts=1, seed=45),
    steps=steps,
    checks=[],
    mutant="org-root-previous-ignored",
    backends=frozenset({"qemu", "local"}),
)
