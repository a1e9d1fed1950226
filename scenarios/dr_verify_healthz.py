"""Seed 001 Verify 1: right after the DR wipe and restart, the unauthenticated
`/healthz` answers 200 with `last_tick_at` set, within 30 s at a 60 s poll (half a
poll): the reconcile loop is alive and has ticked.

The reference test read a camelCase key the CP never sends and so asserted nothing;
this one reads the documented `last_tick_at` (docs/protocol.md: RFC 3339 or null) and
fails on a renamed field, a null, or a value that is no RFC 3339 instant. The mutant
is a reconcile loop that never ticks.
"""

from harness.fleet import Fleet, Reply, Scenario, Shape, expect
from harness.runner import SSH_NOT_PROVEN
from harness.steps import ask_cp, dr_restart, field_of
from nixfleet.core.errors import NixfleetError
from nixfleet.core.timeutil import parse_instant

TICK_POLLS = 0.5
"""30 s at a 60 s poll."""


def ticked(reply: Reply) -> bool:
    return reply.status == 200 and field_of(reply, "last_tick_at") is not None


def steps(fleet: Fleet) -> None:
    dr_restart(fleet)
    replies = ask_cp(
        fleet,
        "GET",
        "/healthz",
        as_=None,
        until=ticked,
        within=fleet.polls(TICK_POLLS),
        what="unauthenticated /healthz 200 with last_tick_at set after the DR restart",
    )
    body = replies[-1].json()
    expect(body.get("ok") is True, "/healthz to say ok: true", body)
    tick = str(body["last_tick_at"])
    try:
        parse_instant(tick)
    except NixfleetError as exc:
        expect(False, "last_tick_at to be an RFC 3339 instant", f"{tick!r} ({exc})")


SCENARIO = Scenario(
    id="dr-verify-healthz",
    source="001 Verify 1",
    summary="after the DR wipe: unauthenticated /healthz 200, last_tick_at set in half a poll",
    shape=Shape(hosts=20, local_hosts=1, seed=11),
    steps=steps,
    checks=[],
    mutant="reconcile-never-ticks",
    backends=frozenset({"ssh", "qemu", "sim", "local"}),
    waiting={"ssh": SSH_NOT_PROVEN},
)
