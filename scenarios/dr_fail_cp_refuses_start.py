"""Seed 001 "When this fails", bullet 1: the CP does not start, or starts unready.

Three broken starts after the wipe, each on its own: the trust file unreadable (gone,
as an undecrypted agenix secret leaves it); the baked build-time artifact with a
flipped byte while the forge is down and nothing else verified is left (a rebuilt
host: no snapshot cache either); a foreign schema in a non-empty state.db. Each must
refuse loudly: exit within 10 s naming the cause, or listen but hold `/v1/*` at 503
saying why; no checkin ever gets a target. Repaired, the same CP starts and serves.
The mutant takes the baked artifact on trust, without its signature.
"""

from harness.byhand import checkin_by_hand
from harness.fleet import (
    DISPATCH,
    OPERATOR,
    CpExited,
    Fleet,
    Scenario,
    Shape,
    expect,
)

EXIT_SECS = 10.0
"""Seed 001: a refusal at start-up comes at once (an absolute bound, no poll in it)."""
HOLD_POLLS = 3
"""How long the unready CP is watched: every agent checks in meanwhile."""
FOREIGN_DB = (
    'sqlite3 state.db "CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT); '
    "INSERT INTO accounts VALUES (1, 'alice');\""
)
"""Another program's DB where the CP's should be."""


def refused_at_start(fleet: Fleet, cause: str, names: str) -> None:
    """`cp.start()` exits non-zero within EXIT_SECS with a line containing `names`."""
    try:
        fleet.cp.start()
    except CpExited as exc:
        expect(exc.status != 0, f"{cause}: a non-zero exit", exc.status)
        expect(exc.secs <= EXIT_SECS, f"{cause}: the exit within {EXIT_SECS:g} s", exc.secs)
        expect(names in exc.output, f"{cause}: the refusal naming {names!r}", str(exc))
        return
    expect(False, f"{cause}: the CP to refuse to start", "it listens")


def held_at_503(fleet: Fleet) -> None:
    """The corrupt baked artifact with the forge down: listening, `/v1/*` 503, the
    rejection said, no dispatch."""
    fleet.cp.stop()
    fleet.cp.wipe()
    fleet.operator("rm -f verified-fleet.json")  # a rebuilt host: no snapshot cache
    fleet.forge_fault("down")
    fleet.cp.corrupt_baked()
    fleet.cp.start()
    since = fleet.now()
    fleet.sleep(fleet.polls(HOLD_POLLS))
    dispatched = [e.line() for e in fleet.history.of(DISPATCH) if e.t >= since]
    expect(not dispatched, "no checkin to get a target", dispatched[:3])
    channel = fleet.call("GET", "/v1/channels/stable", as_=OPERATOR)
    expect(channel.status == 503, "/v1/channels/stable held at 503", channel.line())
    for host in fleet.hosts:
        status = checkin_by_hand(fleet, host).status
        expect(status == 503, f"{host}'s checkin held at 503", status)
    health = fleet.call("GET", "/healthz", as_=None)
    awaiting = health.json().get("awaiting") if health.status == 200 else None
    expect(bool(awaiting), "/healthz to say what readiness awaits", health.line())
    said = fleet.operator('grep -F "build-time artifact rejected" "$CP_LOG" || true')
    expect("bad-signature" in said, "the CP to say the baked artifact was rejected", said[:200])
    fleet.cp.stop()
    fleet.cp.corrupt_baked(False)
    fleet.forge_fault("ok")


def steps(fleet: Fleet) -> None:
    fleet.release()  # so a build-time artifact (release 0) is baked into the CP
    fleet.wait_until(fleet.converged, fleet.polls(30), "release 1 everywhere")
    held_at_503(fleet)
    fleet.operator('mv "$TRUST_FILE" "$TRUST_FILE.away"')
    refused_at_start(fleet, "unreadable trust file", "cannot read trust file")
    fleet.operator('mv "$TRUST_FILE.away" "$TRUST_FILE"')
    fleet.cp.wipe()
    fleet.operator(FOREIGN_DB)
    refused_at_start(fleet, "foreign schema in a non-empty DB", "another schema (accounts)")
    fleet.cp.wipe()
    fleet.cp.start()  # repaired: the same CP starts and serves
    fleet.wait_until(
        lambda: fleet.call("GET", "/v1/channels/stable", as_=OPERATOR).status == 200,
        fleet.polls(2),
        "the repaired CP to serve the channel",
    )


SCENARIO = Scenario(
    id="dr-fail-cp-refuses-start",
    source='001 "When this fails", bullet 1',
    summary="bad trust, corrupt baked artifact + forge down, foreign DB: exit or 503, no target",
    shape=Shape(local_hosts=1, seed=19),
    steps=steps,
    checks=[],
    mutant="baked-artifact-unverified",
    backends=frozenset({"qemu", "local"}),
)
