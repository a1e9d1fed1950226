"""`confirm-deadline-cascade`: a confirm window the agents' switch can outlast.

The CP rolls back a dispatch whose confirm has not come by its deadline, answers the
late confirm 410, and the agent then rolls back a switch that went fine: every host
whose switch outlasts the window, every release (the cascade). The default window,
360 s, is safe against the agents' 300 s switch timeout; below ~310 s it is not. Fixed:
the CP is told the agents' switch timeout (`--agent-switch-timeout-secs`) and refuses a
window under it + 10 s at start, one line, exit 2 (docs/hardening.md).

Steps: with the safe pair (T = 6 polls, the agents' switch timeout), switches of
D = 0.5, 3.3 and 4.8 polls (30, 198, 288 s at a 60 s poll) all confirm 204 within the
window, none rolled back. Then a redeploy with T = 2 polls (120 s) and the agents'
300 s switch timeout must be refused. On `local` the CP accepts no window under 30 s,
so the short window is 30 s there with a switch timeout 3 polls longer, as on `sim`.

Only a CP that takes the short window can show the cascade (the fixed one refuses it),
so the cascade shows in the mutant's run: every host switching for D = T + 1⅓ polls
(200 s at a 60 s poll) has its dispatch rolled back by the CP, its confirm answered
410 and rolls back by itself; the run then fails on the refusal that did not come.
"""

from __future__ import annotations

from collections.abc import Sequence

from fleet_sim.checkers import CLEAN_RUN
from harness.fleet import (
    CONFIRM,
    DISPATCH,
    ROLLBACK,
    CpExited,
    Event,
    Fleet,
    Scenario,
    Shape,
    expect,
)
from harness.steps import holds_within, wait_settled
from nixfleet.core.agent import CP_410_PREFIX, MIN_CONFIRM_WINDOW_SECS

SAFE_SWITCH_POLLS = (0.5, 3.3, 4.8)
"""D = 30, 198, 288 s at a 60 s poll: up to just under the agents' 300 s timeout."""
SHORT_WINDOW_POLLS = 2.0
"""T = 120 s at a 60 s poll."""
SHORT_BUDGET_POLLS = 3.0
"""The agents' switch timeout over the short window: 300 s against 120 s."""
CASCADE_SWITCH_POLLS = 4 / 3
"""How much longer than the short window the cascade's switches take: 200 s at 120 s."""
REFUSED = "below the agents' switch timeout"
"""What the CP's one line says (nixfleet.cp.config.confirm_window_problem)."""


def after(fleet: Fleet, kind: str, since: float) -> list[Event]:
    return [e for e in fleet.history.events if e.kind == kind and e.t >= since]


def safe_window(fleet: Fleet) -> None:
    """Switches up to just under the agents' timeout confirm 204 within the window."""
    hosts = sorted(fleet.hosts)
    for i, polls in enumerate(SAFE_SWITCH_POLLS):
        fleet.slow_activation(hosts[i :: len(SAFE_SWITCH_POLLS)], fleet.polls(polls))
    started = fleet.now()
    fleet.release()
    wait_settled(fleet, then=2)  # converged: every host confirmed, no window left
    confirms = after(fleet, CONFIRM, started)
    bad = [f"{e.host}: {e.detail.get('status')}" for e in confirms if e.detail.get("status") != 204]
    expect(not bad, "every confirm of the safe window answered 204", bad)
    rolled = [f"{e.host}: {e.detail.get('reason')}" for e in after(fleet, ROLLBACK, started)]
    expect(not rolled, "no rollback under the safe window", rolled)
    late = late_confirms(fleet, started, hosts)
    expect(not late, f"every host confirmed within the {fleet.confirm_window:g} s window", late)


def late_confirms(fleet: Fleet, since: float, hosts: Sequence[str]) -> list[str]:
    """Hosts without a 204 within the window of their first dispatch since `since`."""
    out = []
    for host in hosts:
        sent = [e.t for e in after(fleet, DISPATCH, since) if e.host == host]
        ok = [
            e.t for e in after(fleet, CONFIRM, since)
            if e.host == host and e.detail.get("status") == 204
        ]  # fmt: skip
        if not sent or not ok or ok[0] - sent[0] > fleet.confirm_window:
            took = f"{ok[0] - sent[0]:.0f} s" if sent and ok else "none"
            out.append(f"{host} ({took})")
    return out


def short_pair(fleet: Fleet) -> tuple[float, float]:
    """(window, the agents' switch timeout) the CP must refuse: 120 s and 300 s at a
    60 s poll; on `local`, the least window the CP takes and 3 polls more."""
    window = max(fleet.polls(SHORT_WINDOW_POLLS), float(MIN_CONFIRM_WINDOW_SECS))
    return window, max(fleet.switch_timeout, window + fleet.polls(SHORT_BUDGET_POLLS))


def short_window(fleet: Fleet) -> None:
    """The short window is refused with the CP's one line; the safe pair comes back."""
    safe = fleet.confirm_window
    window, budget = short_pair(fleet)
    try:
        fleet.cp.reconfigure(confirm_window=window, switch_timeout=budget)
    except CpExited as refused:
        expect(
            refused.status == 2 and REFUSED in str(refused),
            f"the CP to refuse a {window:g} s window ({REFUSED} {budget:g} s + 10 s), exit 2",
            refused,
        )
        fleet.cp.start()
        expect(fleet.confirm_window == safe, f"the CP back with its {safe:g} s window")
        return
    seen = cascade(fleet, window)
    expect(
        False,
        f"the CP to refuse a {window:g} s confirm window {REFUSED} ({budget:g} s) + 10 s",
        f"it started with it, and {seen}",
    )


def cascade(fleet: Fleet, window: float) -> str:
    """Under a window the switch outlasts: the CP's rollback, its 410, the agents' own
    rollback, for every host. Says what happened."""
    hosts = sorted(fleet.hosts)
    switch = window + fleet.polls(CASCADE_SWITCH_POLLS)
    fleet.slow_activation(hosts, switch)
    started = fleet.now()
    fleet.release()

    def cascaded() -> list[str]:
        told = {str(e.host) for e in after(fleet, CONFIRM, started) if e.detail["status"] == 410}
        back = {
            str(e.host)
            for e in after(fleet, ROLLBACK, started)
            if str(e.detail.get("reason", "")).startswith(CP_410_PREFIX)
        }
        return sorted(set(hosts) & told & back)

    holds_within(fleet, lambda: len(cascaded()) == len(hosts), switch + window + fleet.polls(10))
    rows = fleet.cp.sql(
        "SELECT DISTINCT hostname FROM pending_confirms WHERE state = 'rolled-back'"
    )
    by_cp = sorted(set(hosts) & {str(r[0]) for r in rows})
    return (
        f"switches of {switch:.0f} s cascaded: the CP rolled back {len(by_cp)}/{len(hosts)} "
        f"dispatches, {len(cascaded())}/{len(hosts)} hosts got 410 and rolled back "
        f"({CP_410_PREFIX})"
    )


def steps(fleet: Fleet) -> None:
    safe_window(fleet)
    short_window(fleet)


SCENARIO = Scenario(
    id="confirm-deadline-cascade",
    source="`modules/scopes/nixfleet/_control-plane.nix` (360 s default, unsafe below ~310 s)",
    summary="switches up to the agents' timeout confirm in the 360 s window; the CP refuses "
    "a window under that timeout + 10 s, which would roll back, 410 and roll back again",
    shape=Shape(hosts=9, local_hosts=3, waves=1, seed=12),
    steps=steps,
    checks=CLEAN_RUN,
    mutant="confirm-window-below-budget",
    backends=frozenset({"qemu", "sim", "local"}),
)
