"""`agent-offline-manifest-cache` (seed 004 Key types: manifest_cache, the persisted
last-good manifest "for offline-tolerant verification"; lifecycle §5.10).

Two hosts; the CP is gone for 10 polls and both agents are restarted half-way through:
- `steady` is converged and stays so (CI kept its closure): its running system is
  unchanged, it never rolls back, checks in again after the CP returns and is
  dispatched nothing.
- `moving` is mid-rollout: it verified the new rollout's manifest (written through to
  its state dir) but could not fetch the closure (the binary cache was down), so the
  CP keeps re-offering the target. The CP comes back without CI's rollout manifests
  (its `--rollouts-dir` not restored yet), so the only copy the host can verify the
  re-offered target against is the one it persisted before the outage. It must use
  that copy after its restart, take the target and confirm it, with no rollback.

Deviations from the catalogue, by design:
- "checkin <= P + 30 s after the CP returns" does not hold for a 10-poll outage: the
  agent backs off `poll x 2^min(failures, 3) x (1 +- 20 %)` between failed checkins
  (lifecycle §5.1), so its next try may come up to 9.6 polls after the CP is back. The
  bound asserted is that backoff bound.
- A converged agent never reads its manifest cache (a target equal to the running
  system needs no manifest), so the cache is exercised by the mid-rollout host.

Only on `local`: simulated hosts keep no manifest cache (see WAITING_SIM).
"""

from collections.abc import Mapping
from typing import Any

from fleet_sim.checkers import Run, Verdict
from harness.fleet import (
    CHECKIN,
    CONFIRM,
    DISPATCH,
    MANIFEST,
    ROLLBACK,
    Fleet,
    Scenario,
    Shape,
    expect,
)
from nixfleet.core.agent import MAX_BACKOFF_EXPONENT

OUTAGE_POLLS = 10.0
JITTER_MAX = 1.2
"""The agent's backoff jitter is ±20 % (lifecycle §5.1)."""
BACKOFF_POLLS = 2**MAX_BACKOFF_EXPONENT * JITTER_MAX
"""The longest wait between two checkin tries: poll x 2^3 x 1.2 = 9.6 polls."""

WAITING_SIM = (
    "simulated hosts fetch every rollout manifest from the CP and keep no state-dir "
    "manifest cache (fleet_sim/host.py FetchManifest); the cache is the agent shell's "
    "(nixfleet/agent/manifests.py over statedir.ManifestCache), run only by real agents"
)


def since(fleet: Fleet, kind: str, host: str, t: float) -> list[Mapping[str, Any]]:
    return [e.detail for e in fleet.history.of(kind, host) if e.t >= t]


def first_at(fleet: Fleet, kind: str, host: str, t: float) -> float | None:
    return next((e.t for e in fleet.history.of(kind, host) if e.t >= t), None)


def checks_in_within(fleet: Fleet, host: str, back: float, bound: float) -> None:
    """The host's first checkin after the CP's return (at `back`) comes within `bound`."""
    what = f"{host} to check in within its backoff bound ({bound:g} s) of the CP's return"
    fleet.wait_until(
        lambda: first_at(fleet, CHECKIN, host, back) is not None,
        max(0.0, back + bound - fleet.now()),
        what,
    )
    at = first_at(fleet, CHECKIN, host, back) or back
    expect(at - back <= bound, what, f"after {at - back:.1f} s")


def stall_mid_rollout(fleet: Fleet, steady: str, moving: str) -> str:
    """Release with the binary cache down: `moving` verifies (and caches) the manifest,
    fails to fetch the closure and is re-offered the target. Returns the rollout id."""
    fleet.cache_fault("down")
    released = fleet.now()
    fleet.release(keep=[steady])
    fleet.wait_until(
        lambda: any(d.get("reoffer") for d in since(fleet, DISPATCH, moving, released)),
        fleet.polls(6),
        f"{moving} to verify the manifest, fail to fetch the closure and be re-offered it",
    )
    verified = since(fleet, MANIFEST, moving, released)
    expect(bool(verified), f"{moving} to have verified the rollout's manifest", verified)
    return str(verified[0]["rollout"])


def steps(fleet: Fleet) -> None:
    steady, moving = fleet.hosts[0], fleet.hosts[1]
    running = {h: fleet.current(h) for h in (steady, moving)}
    rollout = stall_mid_rollout(fleet, steady, moving)
    expect(fleet.current(moving) == running[moving], f"{moving} still on its old system")

    fleet.cp.stop()
    down = fleet.now()
    fleet.sleep(fleet.polls(OUTAGE_POLLS / 2))
    for host in (steady, moving):
        fleet.kill_agent(host)
        fleet.start_agent(host)
    restart = fleet.now()
    # The CP returns without CI's manifests; the closure is in the binary cache now.
    fleet.operator('mkdir -p "$ROLLOUTS_DIR.lost" && mv "$ROLLOUTS_DIR"/* "$ROLLOUTS_DIR.lost"/')
    fleet.cache_fault("ok")
    fleet.sleep(max(0.0, down + fleet.polls(OUTAGE_POLLS) - fleet.now()))
    for host in (steady, moving):
        expect(
            fleet.current(host) == running[host],
            f"{host}'s running system unchanged through the outage",
            fleet.current(host),
        )
    fleet.cp.start()
    back = fleet.now()

    bound = fleet.polls(BACKOFF_POLLS)
    fleet.wait_until(
        lambda: (
            fleet.converged([moving])
            and any(c.get("status") == 204 for c in since(fleet, CONFIRM, moving, back))
        ),
        bound + fleet.polls(4),
        f"{moving}, restarted while the CP was gone, to verify rollout {rollout[:12]} from "
        "its persisted last-good manifest (the returning CP serves none), switch and confirm",
    )
    sources = [d.get("source") for d in since(fleet, MANIFEST, moving, restart)]
    expect(
        bool(sources) and all(s == "cache" for s in sources),
        f"{moving} to verify the re-offered target from its persisted manifest after its "
        "restart, never from the CP",
        sources,
    )
    for host in (steady, moving):
        checks_in_within(fleet, host, back, bound)
    expect(
        not since(fleet, DISPATCH, steady, back),
        f"no dispatch to the converged {steady} after the CP returns",
        since(fleet, DISPATCH, steady, back),
    )
    expect(fleet.current(steady) == running[steady], f"{steady} still on its system")


def no_rollback_no_restart(run: Run) -> Verdict:
    """No rollback anywhere, and every agent still running: no restarts beyond the
    scenario's own (an agent that exited stays down here, so it shows as unreachable)."""
    rollbacks = [f"{e.host}@{e.t:.0f}s" for e in run.history.of(ROLLBACK)]
    down = sorted(n for n, h in run.final.hosts.items() if not h.reachable)
    ok = not rollbacks and not down
    return Verdict("no-rollback-no-restart", ok, f"rollbacks {rollbacks}, agents down {down}")


SCENARIO = Scenario(
    id="agent-offline-manifest-cache",
    source="004 Key types (manifest cache); architecture §5",
    summary="CP gone 10 polls, agents restarted mid-outage: the converged host stays put, "
    "the mid-rollout one resumes from its persisted last-good manifest",
    shape=Shape(hosts=2, local_hosts=2, confirm_window_polls=40.0, seed=9),
    steps=steps,
    checks=[no_rollback_no_restart],
    mutant="manifest-cache-not-persisted",
    backends=frozenset({"qemu", "sim", "local"}),
    waiting={"sim": WAITING_SIM},
)
