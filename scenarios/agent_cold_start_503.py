"""Reference commit `1a3e1f8` (`CPT/not_ready_gate.rs`): the cold-start 503.

Until the CP has verified every artifact it waits for, every `/v1/*` call gets 503,
`Retry-After: 30`, `{"error": "control plane not ready"}`, while `/healthz` stays 200
(lifecycle §4.9). Here the CP restarts with its forge down and a revocations sidecar
configured: the fleet snapshot comes from its cache, the revocations list only from
the forge, so it stays unprimed for 2 polls (120 s at a 60 s poll). Agents treat the
503 as any failed checkin: they retry in-process on their backoff (lifecycle §5.1),
never exit, and check in at their next retry once the CP is ready. Once ready, a call
without a client certificate is refused by identity (401), no longer by readiness.
"""

import json

from fleet_sim.checkers import Run, Verdict
from harness.fleet import (
    AGENT_START,
    CHECKIN,
    CHECKIN_FAILED,
    OPERATOR,
    Fleet,
    Reply,
    Scenario,
    Shape,
    expect,
)

AGENT_EXIT = "agent-exit"  # host {status}: the simulated daemon exited (systemd restarts it)
BACKOFF_JITTER = 1.2
"""The checkin backoff's upper jitter (poll × 2^min(failures−1, 3) × ±20 %)."""


def header(reply: Reply, name: str) -> str | None:
    return next((v for k, v in reply.headers.items() if k.lower() == name), None)


def not_ready(reply: Reply) -> bool:
    try:
        error = reply.json().get("error")
    except (ValueError, AttributeError):
        error = None
    return (
        reply.status == 503
        and header(reply, "retry-after") == "30"
        and (error == "control plane not ready")
    )


def cp_ready(fleet: Fleet) -> bool:
    reply = fleet.call("GET", "/healthz", as_=None)
    return reply.status == 200 and json.loads(reply.body).get("ready") is True


def retry_bound(fleet: Fleet, host: str, since: float, ready_at: float) -> float:
    """When the host's next checkin is due at the latest: its last failure before the
    CP became ready plus the backoff its failures since `since` had reached."""
    failed = [e.t for e in fleet.history.of(CHECKIN_FAILED, host) if since <= e.t <= ready_at]
    if not failed:
        return ready_at + fleet.polls(BACKOFF_JITTER)
    backoff = 2 ** min(len(failed) - 1, 3) * BACKOFF_JITTER
    return max(failed[-1] + fleet.polls(backoff), ready_at)


def steps(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    fleet.cp.stop()
    fleet.forge_fault("down")
    fleet.cp.start()
    since = fleet.now()
    for as_, who in ((host, host), (None, "no certificate")):
        reply = fleet.call("GET", "/v1/whoami", as_=as_)
        expect(not_ready(reply), f"/v1/whoami as {who}: 503 Retry-After 30 not ready",
               f"{reply.line()} retry-after={header(reply, 'retry-after')}")  # fmt: skip
    health = fleet.call("GET", "/healthz", as_=None)
    expect(health.status == 200, "/healthz 200 while unprimed", health.line())
    fleet.sleep(fleet.polls(2))
    expect(not cp_ready(fleet), "the CP still unprimed after 2 polls with the forge down")
    fleet.forge_fault("ok")
    fleet.wait_until(lambda: cp_ready(fleet), fleet.polls(2), "the CP to prime from the forge")
    ready_at = fleet.now()
    due = {h: retry_bound(fleet, h, since, ready_at) for h in fleet.hosts}

    def back(h: str) -> bool:
        return any(e.t >= ready_at for e in fleet.history.of(CHECKIN, h))

    fleet.wait_until(
        lambda: all(back(h) or fleet.now() > due[h] + fleet.polls(0.5) for h in fleet.hosts),
        max(due.values()) - fleet.now() + fleet.polls(0.5),
        "every agent to check in at its next retry after the prime",
    )
    late = sorted(h for h in fleet.hosts if not back(h))
    expect(not late, "every agent back within one retry of the prime (in-process, no exit)",
           f"{len(late)} not back: {late[:5]}; {restarts(fleet)}")  # fmt: skip
    reply = fleet.call("GET", "/v1/whoami", as_=None)
    expect(reply.status == 401, "a certless /v1 call refused 401 once ready", reply.line())
    reply = fleet.call("GET", "/v1/whoami", as_=OPERATOR)
    expect(reply.status == 200, "an operator's /v1/whoami 200 once ready", reply.line())


def restarts(fleet: Fleet) -> str:
    """What became of the agents: exits, restarts, agents not running now."""
    starts = fleet.history.count(AGENT_START) - len(fleet.hosts)
    down = sorted(h for h, f in fleet.final().hosts.items() if not f.reachable)
    return f"agent exits {fleet.history.count(AGENT_EXIT)}, restarts {starts}, down {down[:5]}"


def agents_never_restarted(run: Run) -> Verdict:
    """0 restarts: each agent started once, never exited, still running at the end."""
    starts = {h: run.history.count(AGENT_START, h) for h in run.final.hosts}
    again = sorted(h for h, n in starts.items() if n != 1)
    exits = sorted({str(e.host) for e in run.history.of(AGENT_EXIT)})
    down = sorted(h for h, f in run.final.hosts.items() if not f.reachable)
    ok = not again and not exits and not down
    return Verdict(
        "agents-never-restarted",
        ok,
        f"restarted {again[:5]}, exited {exits[:5]}, down at the end {down[:5]}"
        if not ok
        else f"{len(starts)} agents, each started once and still running",
    )


SCENARIO = Scenario(
    id="agent-cold-start-503",
    source="commit `1a3e1f8`; `CPT/not_ready_gate.rs`",
    summary="CP unprimed for 2 polls: /v1 503 Retry-After 30, agents retry in-process, "
    "back at their next retry, then certless 401",
    shape=Shape(hosts=20, local_hosts=2, waves=1, seed=13, revocations_sidecar=True),
    steps=steps,
    checks=[agents_never_restarted],
    mutant="agent-exits-on-503",
    backends=frozenset({"qemu", "sim", "local"}),
)
