"""`cp-flap-missing-agenix-secret` (seed 000 "CP service flaps after deploy").

The CP's fleet CA key is an agenix secret. When the secret is not encrypted to the
CP host (agenix: "no identity matched any of the recipients") the decrypted file is
missing, or a broken deploy leaves the still-encrypted payload in its place. Two
forms are tried, each with the CP stopped and then restarted:
- the pre-deploy lint, `nixfleet-control-plane check-config` with the very flags the
  CP runs with, exits non-zero in < 5 s with a line naming the key file;
- the CP itself exits non-zero with exactly one line naming the file, no traceback,
  and never binds its port (a certless `/healthz` gets no answer).
After the fix (the decrypted key back) the lint passes, the CP starts and stays up:
one run (no restart) and `/healthz` 200 at every poll for 5 polls.

Waiting for qemu/ssh: the reproduction's systemd restart loop (>= 3 MainPIDs in 45 s,
TERM-killed, a new PID every ~10 s) needs systemd's `Restart=`; here the refusal is
shown on the one process systemd would restart.
"""

import shlex

from harness.fleet import CP_START, CpExited, Fleet, Scenario, Shape, expect
from harness.runner import SSH_NOT_PROVEN

LINT_SECS = 5.0
HEALTHY_POLLS = 5
AGE_PAYLOAD = r"age-encryption.org/v1\n-> X25519 c2VjcmV0\nc2VjcmV0c2VjcmV0\n--- x\n"
"""What is left when agenix could not decrypt the secret (printf format)."""


def fleet_ca_key(fleet: Fleet) -> str:
    """The `--fleet-ca-key` the CP runs with (its ExecStart)."""
    argv = shlex.split(fleet.operator('printf %s "$CP_ARGS"'))
    expect("--fleet-ca-key" in argv, "the CP to run with --fleet-ca-key", argv)
    return argv[argv.index("--fleet-ca-key") + 1]


def lint(fleet: Fleet) -> tuple[int, list[str], float]:
    """`check-config` with the CP's own flags: exit status, output lines, seconds."""
    began = fleet.now()
    out = fleet.operator(
        'eval "set -- $CP_ARGS"; nixfleet-control-plane check-config "$@" 2>&1; echo "exit=$?"'
    )
    secs = fleet.now() - began
    *lines, status = out.strip().splitlines()
    return int(status.removeprefix("exit=")), lines, secs


def refused(fleet: Fleet, key: str, form: str) -> None:
    """The lint flags the broken key, and the CP refuses to start on it."""
    status, lines, secs = lint(fleet)
    expect(
        status != 0 and any(key in ln for ln in lines) and secs < LINT_SECS,
        f"check-config to flag the {form} fleet CA key {key} (exit != 0, < {LINT_SECS:g} s)",
        f"exit {status} after {secs:.1f} s: {lines}",
    )
    try:
        fleet.cp.start()
    except CpExited as exc:
        naming = [ln for ln in exc.output.splitlines() if key in ln]
        expect(
            exc.status != 0 and len(naming) == 1 and "Traceback" not in exc.output,
            f"the CP to exit non-zero with one line naming the {form} key {key}, no traceback",
            f"exit {exc.status}: {exc.output.strip()[-400:]}",
        )
        expect(
            "control plane listening" not in exc.output,
            "the CP never to listen",
            exc.output[-200:],
        )
    else:
        expect(False, f"the CP to refuse to start with the {form} fleet CA key {key}")
    reply = fleet.call("GET", "/healthz", as_=None)
    expect(reply.status == 0, "the CP's port never bound (no answer at all)", reply.line())


def steps(fleet: Fleet) -> None:
    key = fleet_ca_key(fleet)
    fleet.cp.stop()
    q = shlex.quote(key)
    fleet.operator(f"mv {q} {q}.deployed")
    refused(fleet, key, "missing")
    fleet.operator(f"printf '{AGE_PAYLOAD}' > {q}")
    refused(fleet, key, "undecryptable")

    fleet.operator(f"mv {q}.deployed {q}")  # re-encrypted to the CP, redeployed
    status, lines, _ = lint(fleet)
    expect(status == 0, "check-config to pass once the key is back", lines)
    fleet.cp.start()
    runs = fleet.history.count(CP_START)
    for _ in range(HEALTHY_POLLS):
        reply = fleet.call("GET", "/healthz", as_=None)
        expect(reply.status == 200, "/healthz 200 after the fix", reply.line())
        fleet.sleep(fleet.polls(1))
    expect(
        fleet.history.count(CP_START) == runs,
        f"one CP run throughout the {HEALTHY_POLLS} polls (no restart)",
        fleet.history.count(CP_START),
    )


SCENARIO = Scenario(
    id="cp-flap-missing-agenix-secret",
    source='000 "CP service flaps after deploy"',
    summary="an undecryptable CP secret: check-config flags it in < 5 s, the CP refuses "
    "with one line naming the file and never binds; fixed, it stays up",
    shape=Shape(hosts=1, local_hosts=1, seed=9),
    steps=steps,
    checks=[],
    mutant="lint-skips-secrets",
    backends=frozenset({"ssh", "qemu", "local"}),
    waiting={"ssh": SSH_NOT_PROVEN},
)
