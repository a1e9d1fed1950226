"""NixActivator against a real nix profile and fake system closures in the real store.

Each closure's `bin/switch-to-configuration` points the test's current-system link
at itself (or fails, or points elsewhere); the profile lives under tmp_path.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from typing import IO

import pytest
from agent_testlib import (
    FakeSystems,
    basename,
    generations,
    nix_env,
    profile_target,
    set_profile,
)

from nixfleet.agent.activation import (
    DISCOVER_TARGET,
    NIX_ENV_ROLLBACK,
    NIX_ENV_SET,
    ROLLBACK_SWITCH_EXIT,
    SWITCH_EXIT,
    SWITCH_POLL_TIMEOUT,
    NixActivator,
    is_signature_refusal,
    store_basename_of_link,
)
from nixfleet.core.agent_events import (
    DeferredPendingReboot,
    FiredAndPolled,
    RealiseFailed,
    RollbackDone,
    SpawnFailed,
    SwitchFailed,
    VerifyMismatch,
)
from nixfleet.core.closure import ClosureHash

pytestmark = pytest.mark.nix


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    e = nix_env(tmp_path)
    monkeypatch.setenv("NIX_CONFIG", e["NIX_CONFIG"])  # the activator's own nix calls
    monkeypatch.setenv("XDG_CACHE_HOME", e["XDG_CACHE_HOME"])
    return e


@pytest.fixture
def systems(tmp_path: Path, env: dict[str, str]) -> FakeSystems:
    return FakeSystems(dir=tmp_path / "systems", link=tmp_path / "current-system", env=env)


def booted(systems: FakeSystems, profile: Path, path: str) -> None:
    """The host as installed: generation 1 is `path`, and it is running."""
    set_profile(profile, path, systems.env)
    os.symlink(path, systems.link)


def activator(tmp_path: Path, systems: FakeSystems, **kw: object) -> NixActivator:
    return NixActivator(
        profile=tmp_path / "profiles" / "system",
        current_link=systems.link,
        booted_link=tmp_path / "booted-system",
        switch_timeout_secs=float(kw.pop("switch_timeout_secs", 30.0)),  # type: ignore[arg-type]
        poll_interval_secs=0.05,
        switch_lock=tmp_path / "switch.lock",
        **kw,  # type: ignore[arg-type]
    )


def c(path: str) -> ClosureHash:
    return ClosureHash(basename(path))


async def test_set_switch_verify_then_rollback(tmp_path: Path, systems: FakeSystems) -> None:
    gen1, gen2 = systems.add("1"), systems.add("2")
    profile = tmp_path / "profiles" / "system"
    booted(systems, profile, gen1)
    act = activator(tmp_path, systems)
    assert act.current_system() == c(gen1)

    assert await act.activate(c(gen2)) == FiredAndPolled()
    assert systems.current() == gen2
    assert act.current_system() == c(gen2)  # full basename, not the 32-char hash
    assert profile_target(profile) == gen2
    assert generations(profile) == [1, 2]

    done = await act.rollback()
    assert done == RollbackDone(ok=True, current_closure=c(gen1))
    assert systems.current() == gen1
    assert profile_target(profile) == gen1
    # The older generation's own switch ran (not the newer one's).
    assert systems.calls()[-1] == f"{gen1} switch"
    assert generations(profile) == [1, 2]


async def test_failing_switch_then_rollback(tmp_path: Path, systems: FakeSystems) -> None:
    gen1, bad = systems.add("1"), systems.add("2", fail=True)
    profile = tmp_path / "profiles" / "system"
    booted(systems, profile, gen1)
    act = activator(tmp_path, systems)

    outcome = await act.activate(c(bad))
    assert isinstance(outcome, SwitchFailed)
    assert outcome.phase == SWITCH_EXIT
    assert outcome.exit_code == 3
    assert outcome.stderr_tail is not None and "foo.service failed" in outcome.stderr_tail
    assert systems.current() == gen1
    assert profile_target(profile) == bad  # nix-env --set happened before the switch

    done = await act.rollback()
    assert done.ok and done.current_closure == c(gen1)
    assert profile_target(profile) == gen1
    assert systems.current() == gen1


async def test_switch_to_a_third_closure_is_verify_mismatch(
    tmp_path: Path, systems: FakeSystems
) -> None:
    gen1, other = systems.add("1"), systems.add("other")
    wrong = systems.add("2", point_at=other)
    booted(systems, tmp_path / "profiles" / "system", gen1)
    act = activator(tmp_path, systems)
    assert await act.activate(c(wrong)) == VerifyMismatch(expected=c(wrong), actual=c(other))


async def test_switch_hanging_past_the_bound_times_out(
    tmp_path: Path, systems: FakeSystems
) -> None:
    gen1 = systems.add("1")
    hang = systems.add("2", wait_for=tmp_path / "never")
    booted(systems, tmp_path / "profiles" / "system", gen1)
    act = activator(tmp_path, systems, switch_timeout_secs=0.5)
    outcome = await act.activate(c(hang))
    assert isinstance(outcome, SwitchFailed) and outcome.phase == SWITCH_POLL_TIMEOUT
    assert systems.current() == gen1


async def test_rollback_without_an_older_generation_fails(
    tmp_path: Path, systems: FakeSystems
) -> None:
    gen1 = systems.add("1")
    booted(systems, tmp_path / "profiles" / "system", gen1)
    done = await activator(tmp_path, systems).rollback()
    assert not done.ok and done.phase == NIX_ENV_ROLLBACK and done.exit_code == 1
    assert done.current_closure == c(gen1)


async def test_rollback_whose_older_switch_fails(tmp_path: Path, systems: FakeSystems) -> None:
    old_bad, gen2 = systems.add("1", fail=True), systems.add("2")
    profile = tmp_path / "profiles" / "system"
    set_profile(profile, old_bad, systems.env)
    set_profile(profile, gen2, systems.env)
    os.symlink(gen2, systems.link)
    done = await activator(tmp_path, systems).rollback()
    assert not done.ok and done.phase == ROLLBACK_SWITCH_EXIT and done.exit_code == 3
    assert done.current_closure == c(gen2)


async def test_unusable_profile_is_nix_env_set_failure(
    tmp_path: Path, systems: FakeSystems
) -> None:
    gen1, gen2 = systems.add("1"), systems.add("2")
    os.symlink(gen1, systems.link)
    (tmp_path / "not-a-dir").write_text("")
    act = NixActivator(
        profile=tmp_path / "not-a-dir" / "system",
        current_link=systems.link,
        booted_link=tmp_path / "booted-system",
        switch_lock=tmp_path / "switch.lock",
    )
    outcome = await act.activate(c(gen2))
    assert isinstance(outcome, SwitchFailed) and outcome.phase == NIX_ENV_SET
    assert outcome.exit_code not in (None, 0)
    assert systems.current() == gen1
    assert systems.calls() == []


async def test_changed_kernel_defers_to_next_boot(tmp_path: Path, systems: FakeSystems) -> None:
    gen1, gen2 = systems.add("1", kernel="k1"), systems.add("2", kernel="k2")
    profile = tmp_path / "profiles" / "system"
    booted(systems, profile, gen1)
    outcome = await activator(tmp_path, systems).activate(c(gen2))
    assert outcome == DeferredPendingReboot(component="kernel")
    assert systems.current() == gen1  # not switched
    assert Path(f"{systems.link}.boot").read_text().strip() == gen2  # `boot` ran
    assert profile_target(profile) == gen2


async def test_held_switch_lock_is_realise_failed(tmp_path: Path, systems: FakeSystems) -> None:
    gen1, gen2 = systems.add("1"), systems.add("2")
    booted(systems, tmp_path / "profiles" / "system", gen1)
    lock = tmp_path / "switch.lock"
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        act = activator(tmp_path, systems, switch_timeout_secs=0.3)
        outcome = await act.activate(c(gen2))
    assert isinstance(outcome, RealiseFailed) and "held" in outcome.reason
    assert systems.current() == gen1
    assert await activator(tmp_path, systems).activate(c(gen2)) == FiredAndPolled()


async def test_switch_left_running_by_a_killed_agent_is_adopted(
    tmp_path: Path, systems: FakeSystems
) -> None:
    """Issue 9 #12: an agent killed mid-switch is restarted while its detached switch
    still runs; the target is offered again. The new run waits for that switch and,
    when it ends on the target, adopts it: no second switch, no failure, no rollback."""
    gen1, gen2 = systems.add("1"), systems.add("2")
    profile = tmp_path / "profiles" / "system"
    booted(systems, profile, gen1)
    set_profile(profile, gen2, systems.env)  # the killed run's nix-env --set
    lock = tmp_path / "switch.lock"

    async def earlier_switch(fh: IO[str]) -> None:
        await asyncio.sleep(0.3)
        tmp = systems.link.with_name("current-system.new")
        os.symlink(gen2, tmp)
        os.replace(tmp, systems.link)
        fcntl.flock(fh, fcntl.LOCK_UN)

    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        running = asyncio.create_task(earlier_switch(fh))
        outcome = await activator(tmp_path, systems).activate(c(gen2))
        await running
    assert outcome == FiredAndPolled()
    assert systems.current() == gen2
    assert systems.calls() == []  # this run fired no switch of its own


async def test_missing_nix_env_is_spawn_failure(tmp_path: Path, systems: FakeSystems) -> None:
    gen1, gen2 = systems.add("1"), systems.add("2")
    booted(systems, tmp_path / "profiles" / "system", gen1)
    act = activator(tmp_path, systems, nix_env=str(tmp_path / "no-such-nix-env"))
    outcome = await act.activate(c(gen2))
    assert isinstance(outcome, SpawnFailed)
    done = await act.rollback()
    assert not done.ok and done.phase == NIX_ENV_ROLLBACK


FAKE_SYSTEMD_RUN = """#!/bin/sh
echo "systemd-run $*" >> {log}
while [ "$1" != "--" ]; do shift; done; shift
setsid "$@" > /dev/null 2>&1 < /dev/null &
"""
FAKE_SYSTEMCTL = """#!/bin/sh
echo "systemctl $*" >> {log}
if [ "$1" = show ]; then echo 3; fi
"""


def fake_systemd(tmp_path: Path) -> tuple[str, str, Path]:
    log = tmp_path / "systemd.log"
    run, ctl = tmp_path / "systemd-run", tmp_path / "systemctl"
    run.write_text(FAKE_SYSTEMD_RUN.format(log=log))
    ctl.write_text(FAKE_SYSTEMCTL.format(log=log))
    run.chmod(0o755)
    ctl.chmod(0o755)
    return str(run), str(ctl), log


async def test_systemd_mode_fires_a_transient_unit_and_polls(
    tmp_path: Path, systems: FakeSystems
) -> None:
    gen1, gen2, bad = systems.add("1"), systems.add("2"), systems.add("3", fail=True)
    profile = tmp_path / "profiles" / "system"
    booted(systems, profile, gen1)
    run, ctl, log = fake_systemd(tmp_path)
    act = activator(
        tmp_path, systems, systemd=True, systemd_run=run, systemctl=ctl, switch_timeout_secs=1.0
    )
    assert await act.activate(c(gen2)) == FiredAndPolled()
    lines = log.read_text().splitlines()
    assert lines[0] == "systemctl reset-failed nixfleet-switch.service"
    script = f"{gen2}/bin/switch-to-configuration"
    assert lines[1] == f"systemd-run --unit=nixfleet-switch --collect -- {script} switch"

    # A failing switch never moves the link: the bounded poll gives up, with the
    # unit's ExecMainStatus as exit code.
    outcome = await act.activate(c(bad))
    assert isinstance(outcome, SwitchFailed)
    assert (outcome.phase, outcome.exit_code) == (SWITCH_POLL_TIMEOUT, 3)

    done = await act.rollback()
    assert done == RollbackDone(ok=True, current_closure=c(gen2))
    assert f"systemd-run --unit=nixfleet-rollback --collect -- {script} switch" in log.read_text()


def test_store_links_and_signature_phrases(tmp_path: Path) -> None:
    base = "0" * 32 + "-nixos-system-h1-26.05"
    (tmp_path / "profiles").mkdir()
    os.symlink(f"/nix/store/{base}", tmp_path / "profiles" / "system-7-link")
    os.symlink("system-7-link", tmp_path / "profiles" / "system")
    assert store_basename_of_link(tmp_path / "profiles" / "system") == base
    assert store_basename_of_link(tmp_path / "missing") is None
    os.symlink("/etc", tmp_path / "elsewhere")
    assert store_basename_of_link(tmp_path / "elsewhere") is None
    assert DISCOVER_TARGET == "discover-target"
    for line in (
        "warning: the substitute for '/nix/store/x' from 'http://c' is NOT SIGNED BY ANY OF "
        "THE KEYS in 'trusted-public-keys'",
        "error: cannot add path '/nix/store/x' because it lacks a valid signature",
        "no signature is trusted",
        "No signatures matched",
        "signature mismatch",
        "untrusted signature",
    ):
        assert is_signature_refusal(line)
    assert not is_signature_refusal("don't know how to build these paths")
