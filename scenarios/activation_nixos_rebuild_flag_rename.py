"""Seed 000 "Agent fails activation with unrecognized arguments: --system".

NixOS 26.05's `nixos-rebuild-ng` renamed `--system` to `--store-path`; an agent that
switched with `nixos-rebuild switch --system <path>` failed every activation. The
agent activates with `nix-env --profile … --set <path>`, then the closure's own
`bin/switch-to-configuration switch` (decisions), so the `nixos-rebuild` on the host
(the local backend's shim, exiting 2 on `--system`) never matters: the host is on its
target with one new profile generation and a 204 before the confirm deadline. A switch
that fails all the same is reported and rolled back, never left stalled.
"""

from fleet_sim.checkers import Run, Verdict
from harness.fleet import ACTIVATION_FAILED, CONFIRM, ROLLBACK, Fleet, Scenario, Shape, expect
from harness.refusals import host_reports
from harness.runner import SSH_NOT_PROVEN


def confirmed(fleet: Fleet, host: str) -> bool:
    """On its target, and the CP took its confirm (204)."""
    ok = any(e.detail.get("status") == 204 for e in fleet.history.of(CONFIRM, host))
    return ok and fleet.current(host) == fleet.target(host)


def failure_reports(fleet: Fleet, host: str) -> list[str]:
    """The host's `activation-failed` reports as the CP stored them: phase, exit code,
    the stderr tail's last line."""
    out = []
    for report in host_reports(fleet, host, "activation-failed"):
        details = report.get("details", {})
        tail = str(details.get("stderr_tail") or "").strip().splitlines()
        out.append(f"{details.get('phase')} exit {details.get('exit_code')}: {tail[-1:]}")
    return out


def switch_ended(fleet: Fleet, host: str, installed: str | None) -> bool:
    """Confirmed, or failed and back on the installed closure (never in between)."""
    failed = fleet.history.count(ACTIVATION_FAILED, host) > 0
    return confirmed(fleet, host) or (failed and fleet.current(host) == installed)


def steps(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    installed, generations = fleet.current(host), fleet.generations(host)
    fleet.release()
    fleet.wait_until(
        lambda: switch_ended(fleet, host, installed),
        fleet.confirm_window + fleet.polls(2),
        f"{host}'s switch to end before its confirm deadline: confirmed, or reported and "
        "rolled back",
    )
    expect(
        confirmed(fleet, host),
        f"{host} on its target with a 204 confirm before the deadline",
        f"switch failed and rolled back: {failure_reports(fleet, host)}",
    )
    after = fleet.generations(host)
    expect(
        after == generations + 1,
        f"one new profile generation on {host}",
        f"{generations} before, {after} after",
    )


def failed_switch_rolled_back(run: Run) -> Verdict:
    """Every failed switch is followed by the host's rollback (reported, not stalled)."""
    stalled = [
        f"{e.host}@{e.t:.0f}s"
        for e in run.history.of(ACTIVATION_FAILED)
        if not any(r.t >= e.t for r in run.history.of(ROLLBACK, e.host))
    ]
    failed = run.history.count(ACTIVATION_FAILED)
    return Verdict(
        "failed-switch-rolled-back",
        not stalled,
        f"{failed} failed switches, not rolled back: {stalled}" if stalled else
        f"{failed} failed switches, each rolled back",
    )  # fmt: skip


SCENARIO = Scenario(
    id="activation-nixos-rebuild-flag-rename",
    source=(
        '000 "Agent fails activation with unrecognized arguments: --system" (004 still says "via '
        'nixos-rebuild switch")'
    ),
    summary="with nixos-rebuild-ng's argv on PATH the switch still lands: +1 generation, 204",
    shape=Shape(hosts=1, local_hosts=1, waves=1, seed=7),
    steps=steps,
    checks=[failed_switch_rolled_back],
    mutant="nixos-rebuild-system-activation",
    backends=frozenset({"ssh", "qemu", "local"}),
    waiting={"ssh": SSH_NOT_PROVEN},
)
