"""Seed 001 Verify 2: right after the DR wipe and restart, `/v1/channels/stable` (as an
operator) serves the newest signed release, not the build-time fallback baked into the
CP's closure (always a release behind, seed 000); undeclared channels are 404.

The CP primes from the forge before it listens, so a 503 "not ready" is all it may
answer before its snapshot; the first 200 must already carry the newest `signed_at`,
and it must come within one poll. The mutant is seed 000's stair-step: prime from the
build-time artifact and meet the forge only at the first poll.
"""

from harness.byhand import wait_served
from harness.fleet import OPERATOR, Fleet, Reply, Scenario, Shape, expect
from harness.runner import SSH_NOT_PROVEN
from harness.steps import ask_cp, dr_restart, field_of

CHANNEL = "/v1/channels/stable"


def served(fleet: Fleet) -> object:
    """The `signed_at` the CP serves for `stable` now (None: no 200)."""
    reply = fleet.call("GET", CHANNEL, as_=OPERATOR)
    return field_of(reply, "signed_at") if reply.status == 200 else None


def answered(reply: Reply) -> bool:
    return reply.status == 200


def steps(fleet: Fleet) -> None:
    fallback = served(fleet)  # release 0: what the next CP build bakes in
    newest = fleet.release()
    wait_served(fleet, newest, polls=2)
    signed_at = served(fleet)
    expect(signed_at not in (None, fallback), "the new release to be signed later", signed_at)
    dr_restart(fleet)
    replies = ask_cp(
        fleet,
        "GET",
        CHANNEL,
        as_=OPERATOR,
        until=answered,
        within=fleet.polls(1),
        what=f"{CHANNEL} 200 after the DR restart",
    )
    early = [r.line() for r in replies[:-1] if r.status != 503]
    expect(not early, "only 503 (not ready) before the channel is served", early[:2])
    first = field_of(replies[-1], "signed_at")
    expect(
        first == signed_at,
        f"the first {CHANNEL} after the restart to serve the newest release "
        f"(signed_at {signed_at}), not the build-time fallback ({fallback})",
        first,
    )
    missing = fleet.call("GET", "/v1/channels/no-such-channel", as_=OPERATOR)
    expect(missing.status == 404, "an undeclared channel to be 404", missing.line())


SCENARIO = Scenario(
    id="dr-verify-channel-fresh",
    source="001 Verify 2",
    summary="after the DR wipe: the first channel answer is the newest release, not the fallback",
    shape=Shape(hosts=20, local_hosts=1, seed=12),
    steps=steps,
    checks=[],
    mutant="prime-from-build-time",
    backends=frozenset({"ssh", "qemu", "sim", "local"}),
    waiting={"ssh": SSH_NOT_PROVEN},
)
