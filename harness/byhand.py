"""Steps that speak to the CP as an agent would, by hand (`Fleet.call`): a checkin that
gets a dispatch, a confirm of it, the CP's row for it. The bodies are the ones the CP
tests send (harness.cpenv); the rows are the CP's own `pending_confirms`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from nixfleet.core import protocol

from .cpenv import checkin_body, confirm_body
from .fleet import SNAPSHOT, Fleet, Reply, expect


def served(fleet: Fleet, release: int) -> bool:
    """The CP has taken release `release` as its snapshot."""
    return any(e.detail.get("release") == release for e in fleet.history.of(SNAPSHOT))


def wait_served(fleet: Fleet, release: int, *, polls: float = 3) -> None:
    fleet.wait_until(
        lambda: served(fleet, release), fleet.polls(polls), f"the CP to serve release {release}"
    )


def checkin_by_hand(fleet: Fleet, host: str, closure: str | None = None) -> Reply:
    """One checkin as `host`, reporting `closure` (default: what the host runs)."""
    running = closure if closure is not None else fleet.current(host)
    assert running is not None, f"{host} runs nothing"
    return fleet.call("POST", protocol.CHECKIN, as_=host, body=checkin_body(host, running))


@dataclass(frozen=True, slots=True)
class HandDispatch:
    """A target the CP sent to a checkin by hand."""

    host: str
    rollout: str
    closure: str
    wave: int
    window: float
    """`activate.confirmWindowSecs`: the seconds the CP gave to confirm."""
    channel_ref: str = ""


def target_of(reply: Reply) -> dict[str, Any] | None:
    if reply.status != 200:
        return None
    target: dict[str, Any] | None = reply.json().get("target")
    return target


def dispatch_by_hand(fleet: Fleet, host: str) -> HandDispatch:
    """A stale checkin as `host` (its agent down): the CP must dispatch the declared
    target to it."""
    reply = checkin_by_hand(fleet, host)
    target = target_of(reply)
    expect(
        target is not None and target["closureHash"] == fleet.target(host),
        f"a stale checkin as {host} to get its declared target {fleet.target(host)}",
        reply.line(),
    )
    assert target is not None
    return HandDispatch(
        host=host,
        rollout=str(target["rolloutId"]),
        closure=str(target["closureHash"]),
        wave=int(target.get("waveIndex") or 0),
        window=float(target["activate"]["confirmWindowSecs"]),
        channel_ref=str(target["channelRef"]),
    )


def confirm_by_hand(fleet: Fleet, d: HandDispatch) -> Reply:
    body = confirm_body(d.host, d.rollout, d.closure, d.wave)
    return fleet.call("POST", protocol.CONFIRM, as_=d.host, body=body)


def dispatch_rows(fleet: Fleet, host: str, rollout: str) -> list[tuple[int, str]]:
    """(id, state) of every `pending_confirms` row for (host, rollout), oldest first."""
    rows = fleet.cp.sql(
        "SELECT id, state FROM pending_confirms WHERE hostname = "
        f"'{host}' AND rollout_id = '{rollout}' ORDER BY id"
    )
    return [(int(i), str(s)) for i, s in rows]


def dispatch_row(fleet: Fleet, d: HandDispatch) -> tuple[int, str]:
    """(id, state) of the one row the CP wrote for `d`."""
    rows = dispatch_rows(fleet, d.host, d.rollout)
    expect(len(rows) == 1, f"one dispatch row for {d.host} in rollout {d.rollout}", rows)
    return rows[0]


def at_once(fleet: Fleet, calls: Sequence[Callable[[], Reply]]) -> list[Reply]:
    """Send `calls` concurrently, each on its own thread (real sockets on `local`). On
    `sim` a call takes no simulated time and the simulated CP's SQLite connection is
    bound to its thread, so they go one after another: the same instant there."""
    if fleet.backend == "sim":
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))
