"""`ci/teardown`: seed 001 "Disaster recovery - destroying the control plane" on the
local backend, verified with the runbook's own commands.

1. A fleet of real agents converges on a new release.
2. One host's certificate is revoked with the cookbook's SQL, verbatim (seed 002).
3. The runbook's procedure: stop the CP, `rm -rf state.db state.db-wal state.db-shm`
   in its state dir, start it.
4. The runbook's four verify checks, verbatim through the operator's shell on the CP
   host (the CP listens on 127.0.0.1: `localhost:$CP_PORT`, `journalctl` shows the
   CP's log files, see harness.opshell), and two more: the host revoked before the
   wipe is still refused after it, and every other agent is back within 2 poll
   intervals of the restart.

Prints one block per check (command, output, verdict); exits 1 if any check fails, 2
if the local backend cannot run here.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from harness.backends.local import WIPE, LocalFleetBackend, open_fleet
from harness.backends.loghistory import line_time
from harness.cpenv import CpProcess
from harness.fleet import CONFIRM, REVOKE, CommandFailed, Shape, StepTimeout
from harness.runner import BackendUnavailable
from nixfleet.core.timeutil import format_instant, parse_instant

UNIT = "nixfleet-control-plane.service"
REVOKE_SQL = (
    "INSERT INTO cert_revocations (hostname, not_before, reason, revoked_by)\n"
    "VALUES ('{host}', datetime('now'), 'compromised', 'ci');"
)
"""Seed 002 "Revoke a host's cert", with `ci` as the revoking operator."""
HEALTHZ = "curl -sk https://localhost:$CP_PORT/healthz | jq '.last_tick_at != null'"
CHANNEL = (
    'curl -sk --cacert "$CA_CERT" --cert "$OPERATOR_CERT" --key "$OPERATOR_KEY" '
    "https://localhost:$CP_PORT/v1/channels/stable | jq '.signed_at'"
)
REVOCATIONS = "journalctl -u {unit} --since='{since}' | grep -E 'revocations poll|cert_revocations'"
CHECKINS = (
    "journalctl -u {unit} --since='{since}' | grep 'checkin received' | awk '{{print $NF}}' "
    "| sort -u"
)
REFUSED = (
    "curl -sk -o /dev/null -w '%{{http_code}}\\n' --cert {cert} --key {key} "
    "https://localhost:$CP_PORT/v1/channels/stable"
)
PRIMED_WITHIN_SECS = 30.0
"""The runbook: CP healthy, snapshot primed within ~30 s of restart."""
BACK_WITHIN_POLLS = 2


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    command: str = ""
    output: str = ""

    def render(self) -> str:
        lines = [f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"]
        if self.command:
            lines.append("      $ " + self.command.replace("\n", "\n        "))
        for ln in self.output.strip().splitlines()[:12]:
            lines.append(f"      | {ln}")
        return "\n".join(lines)


class Teardown:
    def __init__(self, fleet: LocalFleetBackend, out: Callable[[str], None]) -> None:
        self.fleet = fleet
        self.out = out
        self.checks: list[Check] = []

    def check(self, c: Check) -> None:
        self.checks.append(c)
        self.out(c.render())

    def cp(self) -> CpProcess:
        cp = self.fleet.local.cp
        if cp is None:
            raise RuntimeError("the control plane was never started")
        return cp

    def sh(self, cmd: str) -> str:
        try:
            return self.fleet.operator(cmd)
        except CommandFailed as exc:
            return f"({exc})"

    def run(self) -> list[Check]:
        fleet = self.fleet
        hosts = list(fleet.hosts)
        revoked, others = hosts[-1], hosts[:-1]

        # 1. converge
        release = fleet.release()
        rollout = fleet.local.release_of(release).rollout_of(hosts[0])
        try:
            fleet.wait_until(
                lambda: fleet.converged() and confirmed(fleet, rollout) == set(hosts),
                fleet.polls(30),
                f"{len(hosts)} hosts converged and confirmed on release {release}",
            )
            self.check(Check("converged", True, f"{len(hosts)} hosts on release {release}, 204"))
        except StepTimeout as exc:
            self.check(Check("converged", False, str(exc)))
            return self.checks

        # 2. revoke one host, as the cookbook does, and see it refused
        sql = REVOKE_SQL.format(host=revoked)
        cmd = f"sqlite3 state.db <<SQL\n{sql}\nSQL"
        self.sh(cmd)
        fleet.record(REVOKE, revoked)
        needle = f"rejecting revoked cert cert_revocations hostname={revoked} "
        try:
            fleet.wait_until(
                lambda: bool(fleet.local.cp_lines(needle)),
                fleet.polls(5),
                f"the CP refusing {revoked}",
            )
            self.check(Check("revoked before the wipe", True, f"{revoked} refused", cmd))
        except StepTimeout as exc:
            self.check(Check("revoked before the wipe", False, str(exc), cmd))
            return self.checks

        # 3. the runbook's procedure
        fleet.cp.stop()
        fleet.cp.wipe()
        state = fleet.local.env.state_dir
        left = sorted(p.name for p in state.glob("state.db*"))
        self.check(Check("wipe", not left, f"left in {state}: {left or 'nothing'}", WIPE))
        since = format_instant(datetime.now(UTC))
        fleet.cp.start()
        restarted = line_time(self.cp().wait_log("control plane listening")) or datetime.now(UTC)

        # 4. verify, verbatim
        self.verify_healthz()
        self.verify_channel(release)
        self.verify_revocations(since)
        self.verify_checkins(since, others, revoked, restarted)
        self.verify_still_refused(revoked)
        bad = fleet.local.tracebacks()
        self.check(Check("no tracebacks", not bad, f"in: {bad}" if bad else "in no process log"))
        return self.checks

    def verify_healthz(self) -> None:
        deadline = time.monotonic() + PRIMED_WITHIN_SECS
        out = self.sh(HEALTHZ)
        while out.strip() != "true" and time.monotonic() < deadline:
            time.sleep(0.5)
            out = self.sh(HEALTHZ)
        ok = out.strip() == "true"
        detail = "healthy, ticking" if ok else f"not true within {PRIMED_WITHIN_SECS:g} s"
        self.check(Check("CP healthy, snapshot primed", ok, detail, HEALTHZ, out))

    def verify_channel(self, release: int) -> None:
        want = self.fleet.local.release_of(release).signed_at
        out = self.sh(CHANNEL)
        try:
            ok = parse_instant(out.strip().strip('"')) == want
        except Exception:  # not a timestamp at all: the check fails, showing the output
            ok = False
        detail = f"release {release}'s signedAt {format_instant(want)}"
        self.check(Check("verified-fleet snapshot fresh", ok, detail, CHANNEL, out))

    def verify_revocations(self, since: str) -> None:
        cmd = REVOCATIONS.format(unit=UNIT, since=since)
        out = self.sh(cmd)
        ok = "cert_revocations: replayed from operator journal revocations=1 " in out
        detail = "the operator's revocation replayed" if ok else "no replay of the revocation"
        self.check(Check("revocations replayed", ok, detail, cmd, out))

    def verify_checkins(
        self, since: str, others: Sequence[str], revoked: str, restarted: datetime
    ) -> None:
        fleet = self.fleet
        cmd = CHECKINS.format(unit=UNIT, since=since)
        within = BACK_WITHIN_POLLS * fleet.poll_secs
        with contextlib.suppress(StepTimeout):  # the check below says who is missing
            fleet.wait_until(
                lambda: set(self.sh(cmd).split()) >= set(others),
                fleet.polls(10),
                "every agent checking in again",
            )
        out = self.sh(cmd)
        listed = out.split()
        ok = set(listed) == set(others)
        detail = f"listed {listed}; expected every host but the revoked {revoked}"
        self.check(Check("every expected agent checked in", ok, detail, cmd, out))

        first: dict[str, float] = {}
        for ln in self.cp().lines("checkin received"):
            host, at = ln.rsplit(" ", 1)[-1], line_time(ln)
            if at is not None and host not in first:
                first[host] = (at - restarted).total_seconds()
        late = {h: round(first.get(h, float("inf")), 1) for h in others}
        ok = all(s <= within for s in late.values())
        detail = f"seconds after the restart: {late} (limit {within:g} s)"
        self.check(Check(f"agents back within {BACK_WITHIN_POLLS} polls", ok, detail))

    def verify_still_refused(self, revoked: str) -> None:
        fleet = self.fleet
        h = fleet.local.host(revoked)
        cmd = REFUSED.format(cert=h.client_cert, key=h.key.tls_key)
        out = self.sh(cmd)
        needle = f"rejecting revoked cert cert_revocations hostname={revoked} "
        logged = self.cp().lines(needle)  # this run's log: since the restart
        ok = out.strip() == "401" and bool(logged)
        detail = f"its cert gets {out.strip()}; {len(logged)} checkins refused since the restart"
        self.check(Check(f"{revoked} still refused after the wipe", ok, detail, cmd, out))


def confirmed(fleet: LocalFleetBackend, rollout: str) -> set[str]:
    return {
        str(e.host)
        for e in fleet.history.of(CONFIRM)
        if e.detail.get("rollout") == rollout and e.detail.get("status") == 204
    }


def run(workdir: Path, hosts: int, out: Callable[[str], None] = print) -> list[Check]:
    with open_fleet(Shape(local_hosts=hosts), workdir, None) as fleet:
        out(f"seed 001 on a local fleet of {hosts} hosts (CP on 127.0.0.1:{fleet.local.env.port})")
        return Teardown(fleet, out).run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ci/teardown",
        description="Seed 001 (wipe the CP's database) on a real local fleet, verified "
        "with the runbook's commands.",
    )
    parser.add_argument("--hosts", type=int, default=3, help="agents (default 3, at least 2)")
    parser.add_argument("--workdir", type=Path, help="keep the fleet's files and logs here")
    args = parser.parse_args(argv)
    if args.hosts < 2:
        parser.error("--hosts must be at least 2 (one is revoked)")
    started = time.monotonic()
    try:
        if args.workdir is not None:
            checks = run(args.workdir, args.hosts)
        else:
            with tempfile.TemporaryDirectory(prefix="teardown-") as tmp:
                checks = run(Path(tmp), args.hosts)
    except BackendUnavailable as exc:
        print(f"ci/teardown: {exc}", file=sys.stderr)
        return 2
    failed = [c.name for c in checks if not c.ok]
    took = time.monotonic() - started
    if failed:
        print(f"ci/teardown: FAILED ({', '.join(failed)}) in {took:.0f} s")
        return 1
    print(f"ci/teardown: all {len(checks)} checks passed in {took:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
