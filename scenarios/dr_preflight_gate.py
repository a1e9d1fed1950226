"""Seed 001 Pre-flight as automation: `nixfleet dr preflight`, given the CP's own serve
flags, refuses the wipe unless the four prerequisites hold.

Each is broken in turn on the CP host: the forge down (signed artifacts unreachable),
the build-time signature gone, the fleet CA key gone (a warning only: existing agents
keep working), every agent offline. Each refusal exits non-zero with one line naming
the prerequisite; all green it says proceed. No run touches state.db (inode and mtime)
or the trust roots and fallback files (byte-identical). The mutant is a preflight that
skips prerequisite 2.
"""

import shlex

from harness.fleet import Fleet, Scenario, Shape, expect
from harness.runner import SSH_NOT_PROVEN

PREFLIGHT = (
    'nixfleet dr preflight $CP_ARGS --operator-cert "$OPERATOR_CERT" --operator-key "$OPERATOR_KEY"'
)
KEPT = ("--trust-file", "--artifact", "--signature", "--fleet-ca-cert", "--fleet-ca-key")
"""The CP's files the wipe must never touch (/etc/nixfleet/cp/*, the baked fallback)."""
OFFLINE_POLLS = 3
"""Online: a checkin within 3 polls."""


def cp_file(fleet: Fleet, flag: str) -> str:
    args = shlex.split(fleet.operator('echo "$CP_ARGS"'))
    return args[args.index(flag) + 1]


def fingerprint(fleet: Fleet) -> str:
    files = " ".join(shlex.quote(cp_file(fleet, f)) for f in KEPT)
    return fleet.operator(f"stat -c '%i %Y.%y' state.db; sha256sum {files} 2>&1 || true")


def preflight(fleet: Fleet) -> tuple[int, str]:
    """Its exit status and output; state.db and the CP's files must be as they were."""
    before = fingerprint(fleet)
    out = fleet.operator(f'out=$({PREFLIGHT} 2>&1); echo "$?"; echo "$out"')
    after = fingerprint(fleet)
    expect(after == before, "state.db and the CP's files untouched by the preflight", after)
    status, _, said = out.partition("\n")
    return int(status), said.strip()


def refuses(fleet: Fleet, number: int, why: str) -> None:
    status, said = preflight(fleet)
    expect(status != 0, f"the preflight to refuse ({why})", said)
    lines = said.splitlines()
    expect(len(lines) == 1, f"one line for {why}", said)
    expect(f"prerequisite {number} " in said, f"the line to name prerequisite {number}", said)


def steps(fleet: Fleet) -> None:
    # A second release, so the restarted CP has a build-time fallback (release 0).
    fleet.release()
    fleet.wait_until(fleet.converged, fleet.polls(30), "release 1 everywhere")
    fleet.cp.stop()
    fleet.cp.start()
    green: list[tuple[int, str]] = []

    def passes() -> bool:
        green.append(preflight(fleet))
        return green[-1][0] == 0

    fleet.wait_until(  # the agents back on the restarted CP: online again
        passes,
        fleet.polls(3),
        "the preflight to pass with every prerequisite in place",
    )
    expect("proceed" in green[-1][1], "all green: proceed", green[-1][1])
    fleet.forge_fault("down")
    refuses(fleet, 1, "signed artifacts unreachable")
    fleet.forge_fault("ok")
    sig = shlex.quote(cp_file(fleet, "--signature"))
    fleet.operator(f"mv {sig} {sig}.away")
    refuses(fleet, 2, "build-time signature missing")
    fleet.operator(f"mv {sig}.away {sig}")
    key = shlex.quote(cp_file(fleet, "--fleet-ca-key"))
    fleet.operator(f"mv {key} {key}.away")
    status, said = preflight(fleet)
    expect(status == 0 and "warning" in said, "a missing fleet CA: a warning, proceed", said)
    fleet.operator(f"mv {key}.away {key}")
    for host in fleet.hosts:
        fleet.kill_agent(host)
    fleet.wait_until(
        lambda: preflight(fleet)[0] != 0,
        fleet.polls(OFFLINE_POLLS + 3),
        "the preflight to refuse once every agent is offline",
    )
    refuses(fleet, 4, "no agent online")


SCENARIO = Scenario(
    id="dr-preflight-gate",
    source="001 Pre-flight; `docs/operations/disaster-recovery.md`",
    summary="nixfleet dr preflight refuses the wipe until all four prerequisites hold",
    shape=Shape(local_hosts=2, seed=23),
    steps=steps,
    checks=[],
    mutant="preflight-skips-build-time",
    backends=frozenset({"ssh", "qemu", "local"}),
    waiting={"ssh": SSH_NOT_PROVEN},
)
