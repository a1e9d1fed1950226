"""Seed 000 "Forgejo poll fails with TLS handshake error": the forge sits behind a
certificate from a private CA that the CP host's OS trust store holds (NixOS
`security.pki.certificateFiles`), and the CP is given no `--upstream-ca`.

The CP's upstream TLS uses the system trust store (docs/decisions.md), so a release
reaches it within one poll and no poll fails over the next 3 polls. Control, the CA
taken out of the store: the first poll fails naming the TLS cause, the snapshot and
readiness are kept. The mutant is the reference's bundled public roots only.
"""

from harness.fleet import (
    CP_START,
    OPERATOR,
    POLL_FAILED,
    RELEASE,
    SNAPSHOT,
    Fleet,
    Scenario,
    Shape,
    expect,
)
from harness.runner import SSH_NOT_PROVEN
from harness.steps import field_of, holds_within

CHANNEL = "/v1/channels/stable"
TLS_CAUSE = "TLS certificate not trusted"
FETCH_SLACK_POLLS = 0.25
"""The poll's own fetch and verify: the CP's poll period runs from the end of the
previous poll, so one poll after the release the fetch may still be under way."""
QUIET_POLLS = 3


def restart(fleet: Fleet, trust: str) -> float:
    """Restart the CP trusting the forge's CA as `trust`; the fleet time it listens."""
    fleet.forge_trust(trust)
    fleet.cp.stop()
    fleet.cp.start()
    return [e.t for e in fleet.history.of(CP_START)][-1]


def refused(fleet: Fleet, since: float) -> list[str]:
    return [
        str(e.detail.get("reason"))
        for e in fleet.history.of(POLL_FAILED)
        if e.t >= since and e.detail.get("upstream") == "channel-refs"
    ]


def served(fleet: Fleet) -> object:
    reply = fleet.call("GET", CHANNEL, as_=OPERATOR)
    return field_of(reply, "signed_at") if reply.status == 200 else reply.line()


def ready(fleet: Fleet) -> object:
    return field_of(fleet.call("GET", "/healthz", as_=None), "ready")


def refresh_within_a_poll(fleet: Fleet) -> None:
    number = fleet.release()
    released = [e.t for e in fleet.history.of(RELEASE)][-1]
    bound = fleet.polls(1 + FETCH_SLACK_POLLS)

    def refreshed() -> bool:
        return any(
            e.t >= released and e.detail.get("release") == number
            for e in fleet.history.of(SNAPSHOT)
        )

    expect(
        holds_within(fleet, refreshed, bound - (fleet.now() - released)),
        f"release {number} served within one poll ({bound:g} s) through the OS trust store",
        f"{served(fleet)}; channel-refs failures: {refused(fleet, released)[:1]}",
    )


def steps(fleet: Fleet) -> None:
    listening = restart(fleet, "os-store")
    refresh_within_a_poll(fleet)
    fleet.sleep(fleet.polls(QUIET_POLLS))
    failed = refused(fleet, listening)
    expect(not failed, f"no channel-refs failure over {QUIET_POLLS} polls", failed[:2])
    # Control: the CA out of the store; the snapshot and readiness stay as they were.
    kept, was_ready = served(fleet), ready(fleet)
    listening = restart(fleet, "none")
    fleet.wait_until(
        lambda: any(TLS_CAUSE in r for r in refused(fleet, listening)),
        fleet.polls(1),
        f"a channel-refs failure naming '{TLS_CAUSE}' within one poll",
    )
    now = served(fleet)
    expect(now == kept, "the snapshot kept without the CA", now)
    expect(ready(fleet) == was_ready is True, "readiness unchanged (ready)", ready(fleet))


SCENARIO = Scenario(
    id="forge-tls-local-ca",
    source='000 "Forgejo poll fails with TLS handshake error"',
    summary="forge CA only in the OS trust store: refresh in a poll, no failures; control fails",
    shape=Shape(hosts=3, local_hosts=1, seed=17),
    steps=steps,
    checks=[],
    mutant="bundled-roots-only-upstream-tls",
    backends=frozenset({"ssh", "qemu", "local"}),
    waiting={"ssh": SSH_NOT_PROVEN},
)
