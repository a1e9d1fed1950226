"""A seeded fault campaign on the real local fleet (issue 9, acceptance: the fault suite).

One `LocalFleet` (CP + agents, each host with its own Nix store) goes through a series
of releases while faults land on it, every random choice drawn from one seeded
`random.Random`:

- CP SIGKILL during a rollout, triggered by the rollout's own progress (a host got its
  target, a switch is running, a host converged) or a random delay after the publish;
  the restart sometimes comes with the forge down (it answers 503 or drops the
  connection) and the forge comes back a little later;
- agent SIGKILL mid-switch (its detached switch runs on) or after it received the
  target and before it switched, restarted after a random pause;
- disk full on the CP's state dir (a small tmpfs, `StateTmpfs`) while a release is
  published; the disk is freed, the CP SIGKILLed and restarted with the forge down
  before the forge comes back (the seed-000 stair-step by way of a full disk).

Checked as it goes, each failure a `CampaignFailure` naming the seed:

- `PRAGMA integrity_check` is ok after every CP kill;
- no committed row is lost: every pending_confirms row seen `confirmed` (before a
  kill or at any check) still exists, still confirmed, afterwards;
- no older snapshot is ever served: the `signed_at` of `/v1/channels/<ch>` sampled
  about once a second, and the `snapshot refreshed … signed_at=` lines of every CP
  run in order, never go backwards;
- at the end of each release every host runs its closure with its confirm answered,
  the CP's `/v1/hosts` agrees, and every host activated each release's closure
  exactly once (the closure's own switch log), with one profile generation per
  release; no dispatch was rolled back (no closure of the campaign fails, so a
  rollback is one the faults caused);
- no process of the fleet logged a traceback.

`run_campaign(dir, CampaignConfig(seed=…))` returns the figures (kills, convergence
times, activations per host per release); tests/local/test_fault_campaign.py runs a
short one, benchmarks/fault_campaign.py a longer one.
"""

from __future__ import annotations

import errno
import itertools
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from harness.cpenv import curl, sqlite3, wait_until
from harness.forge import ForgeMode
from harness.localfleet import FleetHost, LocalFleet, Release
from harness.pki import CertPaths
from nixfleet.core.timeutil import format_instant, parse_instant

CHANNEL = "stable"
SAMPLE_EVERY_SECS = 1.0
TICK_SECS = 0.1
SNAPSHOT_LINE = "snapshot refreshed"
ROLLBACK_LINE = "rollback reason="
CP_KILL_TRIGGERS = ("dispatched", "switching", "converged-one", "delay")
AGENT_KILL_MOMENTS = ("mid-switch", "before-switch")
FORGE_DOWN_MODES = (ForgeMode.FAIL, ForgeMode.CLOSE)


class CampaignFailure(AssertionError):
    """A rule broken under faults; the message starts with the seed that replays it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CampaignConfig:
    seed: int
    hosts: int = 3
    releases: int = 2
    cp_kills_per_release: int = 1
    agent_kills_per_release: int = 1
    disk_full_every: int = 2
    """Releases whose number is a multiple of this are published on a full disk (0: never)."""
    forge_down_chance: float = 0.5
    """Chance that a CP restart happens with the forge down."""
    switch_delay_secs: float = 2.0
    """How long each switch runs (lock held), so agent kills can land mid-switch."""
    release_timeout_secs: float = 150.0
    tmpfs_size: str = "16m"
    confirm_deadline_secs: int = 60
    """The CP's confirm window. Above 30 s: the CP re-offers a lost target only while
    30 s of its window remain (core/dispatch.py MIN_REOFFER_WINDOW)."""


@dataclass(slots=True)
class ReleaseFigures:
    generation: int
    converge_secs: float
    cp_kills: int = 0
    forge_down_restarts: int = 0
    agent_kills: dict[str, str] = field(default_factory=dict)
    """host → moment ("mid-switch", "before-switch") of each agent kill that landed."""
    missed_agent_kills: int = 0
    """Kills whose moment never came (the host switched between two looks)."""
    disk_full: bool = False
    activations: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class CampaignReport:
    seed: int
    config: CampaignConfig
    releases: list[ReleaseFigures] = field(default_factory=list)
    served: list[str] = field(default_factory=list)
    """Every distinct `signed_at` served, in the order first seen."""
    setup_secs: float = 0.0
    total_secs: float = 0.0

    @property
    def cp_kills(self) -> int:
        return sum(r.cp_kills for r in self.releases)

    @property
    def agent_kills(self) -> int:
        return sum(len(r.agent_kills) for r in self.releases)

    def lines(self) -> list[str]:
        """The figures as printable lines."""
        out = [
            f"fault campaign seed={self.seed} hosts={self.config.hosts} "
            f"releases={len(self.releases)} setup={self.setup_secs:.1f}s "
            f"total={self.total_secs:.1f}s cp_kills={self.cp_kills} "
            f"agent_kills={self.agent_kills}",
            "release  converge_s  cp_kills  forge_down  agent_kills  missed  disk_full  "
            "activations/host",
        ]
        for r in self.releases:
            acts = sorted(set(r.activations.values()))
            out.append(
                f"{r.generation:>7}  {r.converge_secs:>10.1f}  {r.cp_kills:>8}  "
                f"{r.forge_down_restarts:>10}  {len(r.agent_kills):>11}  "
                f"{r.missed_agent_kills:>6}  {'yes' if r.disk_full else 'no':>9}  "
                f"{','.join(map(str, acts))}"
            )
        times = sorted(r.converge_secs for r in self.releases)
        if times:
            out.append(
                f"convergence: min={times[0]:.1f}s median={times[len(times) // 2]:.1f}s "
                f"max={times[-1]:.1f}s; snapshots served in order: {len(self.served)}"
            )
        return out


class StateTmpfs:
    """A small tmpfs mounted on the CP's state dir, so that a test can fill it up.

    `unmount` falls back to a lazy unmount if something still holds it."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        self.size = size
        self.filler = path / ".campaign-filler"
        self.mounted = False

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", str(self.path)],
            check=True,
            capture_output=True,
        )
        self.mounted = True

    def fill(self) -> int:
        """Write a filler file until the tmpfs is full; the bytes written."""
        written = 0
        chunk = 1 << 20
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while chunk >= 512:
                try:
                    written += os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk //= 2
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        if not self.mounted:
            return
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=True)
        self.mounted = False


@dataclass(frozen=True)
class _CpKill:
    """One planned CP SIGKILL, every choice drawn when the release starts."""

    trigger: str
    delay: float
    """Seconds after the publish before the trigger is looked at."""
    forge_down: bool
    forge_mode: ForgeMode
    pause: float
    """Seconds between the kill and the restart."""
    heal_after: float
    """Seconds after the restart before the forge comes back (if it was down)."""


@dataclass
class _AgentKill:
    host: str
    moment: str
    pause: float
    restart_at: float | None = None
    done: bool = False


class Campaign:
    """Drives one fleet through `config.releases` releases under seeded faults."""

    def __init__(
        self,
        fleet: LocalFleet,
        disk: StateTmpfs,
        config: CampaignConfig,
        say: Callable[[str], None] = print,
    ) -> None:
        self.fleet = fleet
        self.disk = disk
        self.cfg = config
        self.say = say
        self.rng = random.Random(config.seed)
        self.report = CampaignReport(seed=config.seed, config=config)
        self.operator: CertPaths = fleet.env.operator()
        self.committed: dict[str, tuple[str, str]] = {}
        """pending_confirms id → (hostname, rollout_id) of every row seen confirmed."""
        self.newest_served: tuple[str, datetime] | None = None
        self.last_sample = 0.0
        self.heal_at: float | None = None

    # --- failing ---------------------------------------------------------------------

    def fail(self, what: str) -> CampaignFailure:
        return CampaignFailure(f"seed={self.cfg.seed}: {what}")

    # --- the rules checked along the way -------------------------------------------------

    def confirmed_rows(self) -> dict[str, tuple[str, str]]:
        rows = self.fleet.sql(
            "SELECT id, hostname, rollout_id FROM pending_confirms WHERE state = 'confirmed';"
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    def check_committed(self, when: str) -> None:
        """Every confirmed row seen so far is still there and still confirmed."""
        now = self.confirmed_rows()
        lost = {i: row for i, row in self.committed.items() if now.get(i) != row}
        if lost:
            raise self.fail(f"committed pending_confirms rows lost {when}: {lost}")
        self.committed.update(now)

    def check_integrity(self, when: str) -> None:
        out = sqlite3(self.fleet.db_path, "PRAGMA integrity_check;").strip()
        if out != "ok":
            raise self.fail(f"PRAGMA integrity_check {when}: {out}")

    def served(self, signed_at: str) -> None:
        """One sample of the snapshot served; it must not be older than any before."""
        at = parse_instant(signed_at, source=f"GET /v1/channels/{CHANNEL}")
        if self.newest_served is not None and at < self.newest_served[1]:
            raise self.fail(
                f"an older snapshot was served: GET /v1/channels/{CHANNEL} gave "
                f"signed_at={signed_at} after signed_at={self.newest_served[0]}"
            )
        if signed_at not in self.report.served:
            self.report.served.append(signed_at)
        if self.newest_served is None or at > self.newest_served[1]:
            self.newest_served = (signed_at, at)

    def sample_served(self) -> None:
        """GET /v1/channels/<ch> as an operator (as seed 001's verify step does)."""
        self.last_sample = time.monotonic()
        cp = self.fleet.cp
        if cp is None or cp.proc.poll() is not None:
            return
        reply = curl(self.fleet.env.curl(f"/v1/channels/{CHANNEL}", cert=self.operator))
        if reply.status == 200:
            self.served(reply.json()["signed_at"])

    def check_snapshot_log(self) -> None:
        """The `snapshot refreshed … signed_at=` lines of every CP run, in order, never
        go backwards (a restart logs the snapshot it starts serving)."""
        texts = [
            line.split("signed_at=", 1)[1].split()[0] for line in self.fleet.cp_lines(SNAPSHOT_LINE)
        ]
        instants = [parse_instant(t, source="CP log") for t in texts]
        if any(after < before for before, after in itertools.pairwise(instants)):
            raise self.fail(f"the CP log shows an older snapshot served: {texts}")

    # --- faults ----------------------------------------------------------------------------

    def kill_cp(self, plan: _CpKill) -> None:
        """SIGKILL the CP, check the DB, restart it (with the forge down if planned)."""
        forge = self.fleet.env.forge
        assert forge is not None
        why = plan.trigger
        self.check_committed("before a CP kill")
        self.fleet.stop_cp(signal.SIGKILL)
        self.check_integrity(f"after a CP SIGKILL ({why})")
        self.check_committed(f"after a CP SIGKILL ({why})")
        if plan.forge_down:
            forge.set_mode(plan.forge_mode)
        time.sleep(plan.pause)
        try:
            self.fleet.start_cp()
        except RuntimeError as exc:
            raise self.fail(f"CP restart after a SIGKILL ({why}) failed: {exc}") from None
        if plan.forge_down:
            self.heal_at = time.monotonic() + plan.heal_after
        self.say(
            f"  CP SIGKILL ({why}); restarted after {plan.pause:.1f}s"
            + (f" with the forge down ({plan.forge_mode})" if plan.forge_down else "")
        )
        self.sample_served()

    def heal_forge_if_due(self, *, now: bool = False) -> None:
        if self.heal_at is not None and (now or time.monotonic() >= self.heal_at):
            forge = self.fleet.env.forge
            assert forge is not None
            forge.heal()
            self.heal_at = None
            self.say("  forge back up")

    def cp_kill_due(self, plan: _CpKill, published: float, release: Release) -> bool:
        if time.monotonic() < published + plan.delay:
            return False
        hosts = self.fleet.hosts.values()
        trigger = plan.trigger
        if trigger == "dispatched":
            return any(_dispatched(h, release) for h in hosts)
        if trigger == "switching":
            return any(_switching(h, release) for h in hosts)
        if trigger == "converged-one":
            return any(self.fleet.converged(release.generation, [h.name]) for h in hosts)
        return True

    def agent_kill_moment_came(self, kill: _AgentKill, release: Release) -> bool:
        h = self.fleet.host(kill.host)
        if kill.moment == "mid-switch":
            return _switching(h, release)
        return _dispatched(h, release) and not h.activations(release.basename(h.name))

    def check_alive(self) -> None:
        """Nothing the campaign did not kill has exited."""
        cp = self.fleet.cp
        if cp is not None and cp.proc.poll() is not None:
            raise self.fail(f"the CP exited {cp.proc.returncode}:\n{cp.log()[-3000:]}")
        for h in self.fleet.hosts.values():
            if h.agents and not h.killed and not h.agent.running():
                raise self.fail(
                    f"agent {h.name} exited {h.agent.proc.returncode}:\n{h.agent.log()[-3000:]}"
                )

    # --- a release ---------------------------------------------------------------------------

    def plan_cp_kill(self, trigger: str, delay: float, *, forge_down: bool = False) -> _CpKill:
        rng = self.rng
        return _CpKill(
            trigger=trigger,
            delay=delay,
            forge_down=forge_down or rng.random() < self.cfg.forge_down_chance,
            forge_mode=rng.choice(FORGE_DOWN_MODES),
            pause=rng.uniform(0.0, 1.0),
            heal_after=rng.uniform(1.0, 4.0),
        )

    def publish_on_full_disk(self, generation: int, plan: _CpKill) -> Release:
        """Publish with the CP's state dir full; then free it, SIGKILL the CP and restart
        it with the forge down: it must serve the snapshot it had recorded, never the one
        it saw while the disk was full and then an older one."""
        filled = self.disk.fill()
        self.say(f"  disk full ({filled} bytes of filler in {self.disk.path})")
        release = self.fleet.release(generation, switch_delay_secs=self.cfg.switch_delay_secs)
        needle = f"signed_at={format_instant(release.signed_at)}"
        cp = self.fleet.cp
        assert cp is not None
        wait_until(
            lambda: cp.lines(needle) or cp.proc.poll() is not None,
            30,
            f"the CP sees release {generation} on a full disk",
        )
        self.check_alive()
        for _ in range(3):
            self.sample_served()
            time.sleep(0.7)
        forge = self.fleet.env.forge
        assert forge is not None
        forge.set_mode(plan.forge_mode)
        self.disk.free()
        self.say("  disk freed, forge down")
        self.kill_cp(plan)
        return release

    def run_release(self, generation: int) -> ReleaseFigures:
        cfg = self.cfg
        rng = self.rng
        disk_full = bool(cfg.disk_full_every) and generation % cfg.disk_full_every == 0
        full_disk_kill = self.plan_cp_kill("disk-full", 0.0, forge_down=True)
        cp_kills = [
            self.plan_cp_kill(
                rng.choice(CP_KILL_TRIGGERS), rng.uniform(0.0, 0.5) if i == 0 else rng.uniform(2, 8)
            )
            for i in range(cfg.cp_kills_per_release)
        ]
        victims = rng.sample(self.fleet.names, min(cfg.agent_kills_per_release, cfg.hosts))
        agent_kills = [
            _AgentKill(host=v, moment=rng.choice(AGENT_KILL_MOMENTS), pause=rng.uniform(0, 2))
            for v in victims
        ]
        self.say(
            f"release {generation}: cp kills {[(k.trigger, round(k.delay, 1)) for k in cp_kills]}, "
            f"agent kills {[(k.host, k.moment) for k in agent_kills]}, disk full {disk_full}"
        )
        figures = ReleaseFigures(generation=generation, converge_secs=0.0, disk_full=disk_full)
        start = time.monotonic()
        if disk_full:
            release = self.publish_on_full_disk(generation, full_disk_kill)
            figures.cp_kills += 1
            figures.forge_down_restarts += 1
        else:
            release = self.fleet.release(generation, switch_delay_secs=cfg.switch_delay_secs)
        published = time.monotonic()
        pending_cp = list(cp_kills)
        while True:
            now = time.monotonic()
            if now - start > cfg.release_timeout_secs:
                raise self.fail(self._not_converged(release, now - start))
            self.check_alive()
            self.heal_forge_if_due()
            if now - self.last_sample >= SAMPLE_EVERY_SECS:
                self.sample_served()
            for kill in agent_kills:
                if kill.restart_at is not None and not kill.done and now >= kill.restart_at:
                    self.fleet.start_agent(kill.host)
                    kill.done = True
                elif kill.restart_at is None and self.agent_kill_moment_came(kill, release):
                    self.fleet.kill_agent(kill.host, signal.SIGKILL)
                    kill.restart_at = now + kill.pause
                    figures.agent_kills[kill.host] = kill.moment
                    self.say(f"  agent {kill.host} SIGKILL {kill.moment}")
            if pending_cp and self.cp_kill_due(pending_cp[0], published, release):
                plan = pending_cp.pop(0)
                self.kill_cp(plan)
                figures.cp_kills += 1
                figures.forge_down_restarts += plan.forge_down
            restarting = any(k.restart_at is not None and not k.done for k in agent_kills)
            if not restarting and self.fleet.converged(generation):
                break
            time.sleep(TICK_SECS)
        figures.converge_secs = time.monotonic() - published
        figures.missed_agent_kills = sum(1 for k in agent_kills if k.restart_at is None)
        self.heal_forge_if_due(now=True)
        self.check_release(release, figures)
        return figures

    def _not_converged(self, release: Release, waited: float) -> str:
        state = {
            n: (h.current_basename() == release.basename(n), h.last_dispatched())
            for n, h in self.fleet.hosts.items()
        }
        return f"release {release.generation} not converged after {waited:.0f} s: {state}"

    def check_release(self, release: Release, figures: ReleaseFigures) -> None:
        """Converged as the CP sees it; one activation and one generation per release."""
        fleet = self.fleet

        def cp_agrees() -> bool:
            reply = curl(fleet.env.curl("/v1/hosts", cert=self.operator))
            if reply.status != 200:
                return False
            hosts = {e["hostname"]: e for e in reply.json()["hosts"]}
            return all(
                hosts[n]["converged"] is True
                and hosts[n]["currentClosureHash"] == release.basename(n)
                for n in fleet.names
            )

        try:
            wait_until(cp_agrees, 20, f"/v1/hosts shows release {release.generation} converged")
        except TimeoutError as exc:
            raise self.fail(str(exc)) from None
        history = [fleet.release_of(g) for g in range(int(release.generation) + 1)]
        for n, h in fleet.hosts.items():
            figures.activations[n] = len(h.activations(release.basename(n)))
            counts = {r.generation: len(h.activations(r.basename(n))) for r in history}
            if set(counts.values()) != {1}:
                raise self.fail(
                    f"host {n}: switches per release (one each expected): {counts}\n"
                    f"agent log tail:\n{h.agent_log()[-3000:]}"
                )
            generations = h.generation_basenames()
            if generations != [r.basename(n) for r in history]:
                raise self.fail(f"host {n}: profile generations {generations}")
        # No closure of the campaign fails: any rollback is one the faults caused.
        rolled = fleet.sql(
            "SELECT hostname, rollout_id FROM pending_confirms WHERE state = 'rolled-back';"
        )
        if rolled:
            raise self.fail(f"dispatches rolled back though no switch failed: {rolled}")
        for n, h in fleet.hosts.items():
            if ROLLBACK_LINE in h.agent_log():
                raise self.fail(f"agent {n} rolled back:\n{h.agent_log()[-3000:]}")
        self.check_committed(f"at the end of release {release.generation}")
        self.check_integrity(f"at the end of release {release.generation}")
        self.check_snapshot_log()

    def run(self) -> CampaignReport:
        for generation in range(1, self.cfg.releases + 1):
            try:
                figures = self.run_release(generation)
            except TimeoutError as exc:
                raise self.fail(f"release {generation}: {exc}") from None
            self.report.releases.append(figures)
            self.say(
                f"release {generation} converged in {figures.converge_secs:.1f}s "
                f"(cp kills {figures.cp_kills}, agent kills {len(figures.agent_kills)})"
            )
        bad = self.fleet.tracebacks()
        if bad:
            raise self.fail(f"tracebacks logged by: {bad}")
        return self.report


def _dispatched(h: FleetHost, release: Release) -> bool:
    record = h.last_dispatched()
    return record is not None and record.get("closureHash") == release.basename(h.name)


def _switching(h: FleetHost, release: Release) -> bool:
    return bool(h.activations(release.basename(h.name))) and h.switch_running()


def run_campaign(
    dir: Path, config: CampaignConfig, say: Callable[[str], None] = print
) -> CampaignReport:
    """Create the fleet (its CP state dir on a tmpfs), run the campaign, tear it all
    down whatever happened: every process by its PID, then the tmpfs."""
    started = time.monotonic()
    fleet = LocalFleet.create(
        dir,
        hosts=config.hosts,
        confirm_deadline_secs=config.confirm_deadline_secs,
        start=False,
    )
    disk = StateTmpfs(fleet.env.state_dir, config.tmpfs_size)
    try:
        disk.mount()
        fleet.start_cp()
        for name in fleet.names:
            fleet.start_agent(name)
        fleet.wait_enrolled()
        campaign = Campaign(fleet, disk, config, say)
        campaign.report.setup_secs = time.monotonic() - started
        report = campaign.run()
    finally:
        fleet.close()  # the CP first: a busy tmpfs would only unmount lazily
        disk.unmount()
    report.total_secs = time.monotonic() - started
    return report


__all__ = [
    "CampaignConfig",
    "CampaignFailure",
    "CampaignReport",
    "ReleaseFigures",
    "StateTmpfs",
    "run_campaign",
]
