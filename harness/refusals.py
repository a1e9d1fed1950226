"""What the CP and the agents refused, read the same way on every backend.

The CP says why it kept its snapshot in a `poll-failed` history event (its
`<upstream>: forge poll failed; retaining previous cache: <reason>` line); an agent
says why it refused a target or a manifest in a signed report the CP stores in
`host_reports` (`manifest-verify-failed`, `manifest-mismatch`, `stale-target`, …),
which `Fleet.cp.sql` reads on `sim` and `local` alike. Shared by the signed-path
scenarios (docs/scenarios.md, section F).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from fleet_sim.checkers import Run, Verdict

from .byhand import served
from .fleet import ACTIVATE, AGENT_START, OPERATOR, POLL_FAILED, RELEASE, Fleet, expect


def rollout_of(fleet: Fleet, release: int) -> str:
    """The rollout id CI's manifest gives `release` (channel `stable`)."""
    for e in fleet.history.of(RELEASE):
        if e.detail.get("release") == release:
            return str(e.detail["rollout"])
    raise KeyError(f"release {release} was never published")


def released_at(fleet: Fleet, release: int) -> float:
    return next(e.t for e in fleet.history.of(RELEASE) if e.detail.get("release") == release)


def poll_failures(fleet: Fleet, since: float) -> list[str]:
    """The reasons the CP gave for keeping its snapshot at its forge polls since `since`."""
    return [str(e.detail["reason"]) for e in fleet.history.of(POLL_FAILED) if e.t >= since]


def served_signed_at(fleet: Fleet) -> str:
    """`signed_at` of the snapshot the CP serves (an operator's `GET /v1/channels/stable`)."""
    reply = fleet.call("GET", "/v1/channels/stable", as_=OPERATOR)
    expect(reply.status == 200, "the CP to serve channel stable", reply.line())
    return str(reply.json()["signed_at"])


def reports(fleet: Fleet, kinds: Iterable[str], rollout: str) -> dict[str, dict[str, Any]]:
    """host → the details of its latest report of one of `kinds` about `rollout`."""
    wanted = ", ".join(f"'{k}'" for k in kinds)
    rows = fleet.cp.sql(
        "SELECT hostname, event_kind, report_json FROM host_reports "
        f"WHERE rollout = '{rollout}' AND event_kind IN ({wanted}) ORDER BY id"
    )
    out: dict[str, dict[str, Any]] = {}
    for host, kind, body in rows:
        details = json.loads(body).get("details") or {}
        out[str(host)] = {"event": kind, **details}
    return out


def host_reports(fleet: Fleet, host: str, kind: str) -> list[dict[str, Any]]:
    """`host`'s reports of `kind` as the CP stored them (the whole body), oldest first."""
    rows = fleet.cp.sql(
        "SELECT report_json FROM host_reports "
        f"WHERE hostname = '{host}' AND event_kind = '{kind}' ORDER BY id"
    )
    return [json.loads(raw) for (raw,) in rows]


def activated(fleet: Fleet, closures: Mapping[str, str | None]) -> list[str]:
    """Hosts that started a switch to the closure `closures` names for them."""
    return sorted(
        {
            str(e.host)
            for e in fleet.history.of(ACTIVATE)
            if e.host in closures and e.detail.get("closure") == closures[str(e.host)]
        }
    )


def wait_refused_by_cp(fleet: Fleet, release: int, reason: str, what: str) -> str:
    """Until the CP refused `release` at a forge poll for `reason` (within 3 polls);
    then its snapshot must still be the one before. Returns the CP's line."""
    since = released_at(fleet, release)
    fleet.wait_until(
        lambda: bool(poll_failures(fleet, since)), fleet.polls(3), f"the CP to refuse {what}"
    )
    seen = poll_failures(fleet, since)
    expect(
        all(r.startswith(f"{reason}:") for r in seen),
        f"the CP to refuse {what} as {reason}",
        seen[:2],
    )
    expect(not served(fleet, release), f"the CP to keep its snapshot, never serving {what}")
    return seen[0]


def nothing_switched(run: Run) -> Verdict:
    """Checker: every host still runs the system it ran when its agent started (nothing
    refused was ever switched to)."""
    started = {str(e.host): e.detail.get("closure") for e in run.history.of(AGENT_START)}
    moved = sorted(h for h, f in run.final.hosts.items() if f.current != started.get(h))
    return Verdict("nothing-switched", not moved, f"switched: {moved[:5]}")
