"""`NixActivator`: fetch, activate and roll back a system closure with real Nix
(lifecycle §5.3, §5.7; seed 000: never `nixos-rebuild`).

Fetch: `nix-store --realise /nix/store/<closure>` with the fleet's substituters and
`trusted-public-keys`; nix checks the cache signatures. Stderr with one of the
signature phrases (case-insensitive) is a signature refusal; any other failure, or
a realised path other than the requested one, is a plain fetch failure.

Activate:
1. `/run/nixos/switch-to-configuration.lock` held (the detached switch of an agent
   killed mid-switch outlives it) ⇒ wait for it, at most the switch timeout; if it
   ended on the target, adopt it (FiredAndPolled, no second switch), else go on; still
   held ⇒ RealiseFailed (retry later). The same check runs when this run's own switch
   exits having lost the lock to such a switch;
2. the closure is realised (a no-op when the fetch put it in the store);
3. `nix-env --profile <profile> --set <path>` (⇒ SwitchFailed `nix-env-set`), after
   reading the previous current-system basename;
4. switch inhibitors (dbus, systemd, kernel differ) ⇒ `switch-to-configuration boot`
   (⇒ SwitchFailed `defer-bootloader-update`) ⇒ DeferredPendingReboot;
5. `<path>/bin/switch-to-configuration switch`: with systemd as PID 1
   (`/run/systemd/system` exists) fired as the transient unit
   `systemd-run --unit=nixfleet-switch --collect` (⇒ SwitchFailed `systemd-run-fire`),
   which survives the agent being restarted by the switch itself; otherwise run
   inline, detached in its own session;
6. the current-system link is polled (every 2 s, at most 300 s) and its *full*
   basename compared: expected ⇒ FiredAndPolled (a drifted profile is re-set);
   neither expected nor previous ⇒ VerifyMismatch; timeout ⇒ SwitchFailed
   `switch-poll-timeout`.

Decision (inline mode only): the agent is the switch's parent and sees it exit, so
it does not wait out the 300 s once the switch has exited without moving the link:
SwitchFailed `switch-exit` with the exit status (and `rollback-switch-exit` for a
rollback). Systemd mode keeps the reference's phases.

Rollback: `nix-env --profile … --rollback` (⇒ `nix-env-rollback`), the profile's
two-level link resolved to a basename (⇒ `discover-target`), then the *older*
closure's own `bin/switch-to-configuration switch` (unit `nixfleet-rollback`),
polled for (⇒ `rollback-poll-timeout`).

Every command's failure becomes an outcome event; nothing here raises to the pump.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nixfleet.core.agent_events import (
    ActivationOutcome,
    DeferredPendingReboot,
    FetchDone,
    FetchFailed,
    FiredAndPolled,
    RealiseFailed,
    RollbackDone,
    SignatureMismatch,
    SpawnFailed,
    SwitchFailed,
    VerifyMismatch,
)
from nixfleet.core.closure import STORE_DIR, ClosureHash, closure_hash_from_path
from nixfleet.core.errors import NixfleetError, ParseError

log = logging.getLogger("nixfleet.agent")

SIGNATURE_PHRASES = (
    "lacks a valid signature",
    "no signature is trusted",
    "is not signed by any of the keys",
    "no signatures matched",
    "signature mismatch",
    "untrusted signature",
)
"""Lifecycle §5.3 step 2: stderr containing one of these (any case) is a refusal."""

# Phase strings (wire contract, lifecycle §5.3 and §5.7).
NIX_ENV_SET = "nix-env-set"
DEFER_BOOTLOADER_UPDATE = "defer-bootloader-update"
SYSTEMD_RUN_FIRE = "systemd-run-fire"
SWITCH_POLL_TIMEOUT = "switch-poll-timeout"
SWITCH_EXIT = "switch-exit"
NIX_ENV_ROLLBACK = "nix-env-rollback"
DISCOVER_TARGET = "discover-target"
ROLLBACK_POLL_TIMEOUT = "rollback-poll-timeout"
ROLLBACK_SWITCH_EXIT = "rollback-switch-exit"

SWITCH_UNIT = "nixfleet-switch"
ROLLBACK_UNIT = "nixfleet-rollback"
SYSTEMD_MARKER = Path("/run/systemd/system")

INHIBITORS = (
    ("dbus", "etc/systemd/system/dbus.service"),
    ("systemd", "sw/lib/systemd/systemd"),
    ("kernel", "kernel"),
)
"""(component, path inside a system closure): a change needs a reboot (§5.3 step 4)."""

DEFAULT_POLL_INTERVAL_SECS = 2.0
DEFAULT_SWITCH_TIMEOUT_SECS = 300.0
DEFAULT_REALISE_TIMEOUT_SECS = 3600.0
COMMAND_TIMEOUT_SECS = 120.0
STDERR_TAIL_LINES = 20
STDERR_TAIL_CHARS = 2048
INLINE_WAIT_SLICE_SECS = 0.05


def is_signature_refusal(stderr: str) -> bool:
    lowered = stderr.lower()
    return any(phrase in lowered for phrase in SIGNATURE_PHRASES)


def stderr_tail(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-STDERR_TAIL_LINES:])[-STDERR_TAIL_CHARS:]


def last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    picked = errors[-1] if errors else (lines[-1] if lines else "")
    return picked[:512]


def store_basename_of_link(path: Path, *, max_depth: int = 8) -> ClosureHash | None:
    """Follow `path` through symlinks (a profile is two levels) to a store path; its
    full basename, or None if the link is missing or leads elsewhere."""
    current = str(path)
    for _ in range(max_depth):
        try:
            target = os.readlink(current)
        except OSError:
            return None
        if not os.path.isabs(target):
            target = os.path.join(os.path.dirname(current), target)
        if target.startswith(STORE_DIR + "/"):
            try:
                return closure_hash_from_path(target)
            except ParseError:
                return None
        current = target
    return None


def store_path(closure: ClosureHash) -> str:
    return f"{STORE_DIR}/{closure}"


class SpawnError(NixfleetError):
    """A command could not be started at all."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


async def run_command(
    argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
) -> CommandResult:
    """Run `argv` to completion; SpawnError if it cannot start, TimeoutError (after
    killing it) if it outlives `timeout`."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
        )
    except OSError as exc:
        raise SpawnError(f"cannot run {argv[0]} ({exc.strerror or exc})") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return CommandResult(
        returncode=proc.returncode if proc.returncode is not None else -1,
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace"),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class _Fired:
    """A switch in flight: a transient unit (`proc` None) or an inline child."""

    unit: str
    proc: asyncio.subprocess.Process | None
    log: Path | None
    temporary: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class _Settle:
    """How a fired switch ended: the link's basename, and the exit status if known."""

    actual: ClosureHash | None
    exited: bool
    """Inline: the switch exited before the bound."""
    exit_code: int | None
    output: str


class NixActivator:
    """Real Nix on the host: `nix-store`, `nix-env`, the closures' own switch scripts."""

    def __init__(
        self,
        *,
        profile: Path,
        current_link: Path,
        booted_link: Path,
        substituters: Sequence[str] = (),
        trusted_public_keys: Sequence[str] = (),
        switch_timeout_secs: float = DEFAULT_SWITCH_TIMEOUT_SECS,
        poll_interval_secs: float = DEFAULT_POLL_INTERVAL_SECS,
        realise_timeout_secs: float = DEFAULT_REALISE_TIMEOUT_SECS,
        switch_lock: Path,
        switch_log: Path | None = None,
        systemd: bool | None = None,
        systemd_run: str = "systemd-run",
        systemctl: str = "systemctl",
        nix_store: str = "nix-store",
        nix_env: str = "nix-env",
    ) -> None:
        self.profile = profile
        self.current_link = current_link
        self.booted_link = booted_link
        self.substituters = tuple(substituters)
        self.trusted_public_keys = tuple(trusted_public_keys)
        self.switch_timeout = switch_timeout_secs
        self.poll_interval = poll_interval_secs
        self.realise_timeout = realise_timeout_secs
        self.switch_lock = switch_lock
        self.switch_log = switch_log
        self.systemd = SYSTEMD_MARKER.is_dir() if systemd is None else systemd
        self.systemd_run = systemd_run
        self.systemctl = systemctl
        self.nix_store = nix_store
        self.nix_env = nix_env

    # --- reading the host -------------------------------------------------------------

    def current_system(self) -> ClosureHash | None:
        return store_basename_of_link(self.current_link)

    def booted_system(self) -> ClosureHash | None:
        return store_basename_of_link(self.booted_link)

    def profile_system(self) -> ClosureHash | None:
        return store_basename_of_link(self.profile)

    def nix_options(self) -> list[str]:
        opts = ["--option", "narinfo-cache-negative-ttl", "0"]
        if self.substituters:
            opts += ["--option", "substituters", " ".join(self.substituters)]
        if self.trusted_public_keys:
            opts += ["--option", "trusted-public-keys", " ".join(self.trusted_public_keys)]
        return opts

    # --- fetch ------------------------------------------------------------------------

    async def fetch(self, closure: ClosureHash) -> FetchDone | FetchFailed:
        path = store_path(closure)
        argv = [self.nix_store, "--realise", path, *self.nix_options()]
        log.info("fetch closure=%s substituters=%s", closure, " ".join(self.substituters) or "-")
        try:
            res = await run_command(argv, timeout=self.realise_timeout)
        except SpawnError as exc:
            return FetchFailed(reason=str(exc))
        except TimeoutError:
            return FetchFailed(
                reason=f"nix-store --realise timed out after {self.realise_timeout:g} s"
            )
        if res.returncode != 0:
            if is_signature_refusal(res.stderr):
                return FetchFailed(
                    reason="closure signature refused",
                    signature_mismatch=True,
                    stderr_tail=stderr_tail(res.stderr),
                )
            why = last_error_line(res.stderr) or f"exit {res.returncode}"
            return FetchFailed(reason=f"nix-store --realise failed: {why}",
                               stderr_tail=stderr_tail(res.stderr))  # fmt: skip
        realised = [ln.strip() for ln in res.stdout.splitlines() if ln.strip()]
        if path not in realised:
            got = realised[-1] if realised else "nothing"
            return FetchFailed(reason=f"realised {got}, not {path}")
        return FetchDone()

    # --- activate ----------------------------------------------------------------------

    def switch_lock_held(self) -> bool:
        try:
            fd = os.open(self.switch_lock, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            return exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def inhibitor(self, current: ClosureHash | None, target: ClosureHash) -> str | None:
        """The first switch inhibitor whose canonical target differs (both present)."""
        if current is None:
            return None
        for component, rel in INHIBITORS:
            old = os.path.join(store_path(current), rel)
            new = os.path.join(store_path(target), rel)
            both = os.path.lexists(old) and os.path.lexists(new)
            if both and os.path.realpath(old) != os.path.realpath(new):
                return component
        return None

    async def activate(self, closure: ClosureHash) -> ActivationOutcome:
        try:
            return await self._activate(closure)
        except SpawnError as exc:
            log.error("activate: cannot run a command closure=%s reason=%s", closure, exc)
            return SpawnFailed(detail=str(exc))

    async def _await_running_switch(self) -> bool:
        """Wait (at most the switch timeout) for a switch another process runs: the
        detached switch of an agent killed mid-switch outlives it. True once free."""
        deadline = time.monotonic() + self.switch_timeout
        while self.switch_lock_held():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.poll_interval)
        return True

    async def _adopted(self, closure: ClosureHash) -> bool:
        """After a switch that was not ours ended: did it leave `closure` running?"""
        if self.current_system() != closure:
            return False
        log.info("switch: adopting a finished switch to the target closure=%s", closure)
        await self._fix_drift(closure)
        return True

    async def _activate(self, closure: ClosureHash) -> ActivationOutcome:
        path = store_path(closure)
        if self.switch_lock_held():
            log.info("switch: another switch holds %s; waiting for it", self.switch_lock)
            if not await self._await_running_switch():
                return RealiseFailed(reason=f"{self.switch_lock} is held (a switch is running)")
            if await self._adopted(closure):
                return FiredAndPolled()
        if not os.path.isdir(path):
            fetched = await self.fetch(closure)
            if isinstance(fetched, FetchFailed):
                if fetched.signature_mismatch:
                    return SignatureMismatch(stderr_tail=fetched.stderr_tail or "")
                return RealiseFailed(reason=fetched.reason)
        previous = self.current_system()
        res = await self._nix_env(["--set", path])
        if res.returncode != 0:
            return SwitchFailed(
                phase=NIX_ENV_SET, exit_code=res.returncode, stderr_tail=stderr_tail(res.stderr)
            )
        component = self.inhibitor(previous, closure)
        if component is not None:
            return await self._defer(closure, component)
        log.info("switch closure=%s previous=%s systemd=%s", closure, previous, self.systemd)
        fired = await self._fire(closure, SWITCH_UNIT)
        if isinstance(fired, SwitchFailed):
            return fired
        end = await self._settle(fired, expected=closure, previous=previous)
        if end.actual == closure:
            await self._fix_drift(closure)
            return FiredAndPolled()
        if end.actual is not None and end.actual != previous:
            return VerifyMismatch(expected=closure, actual=end.actual)
        if end.exited and not self.systemd:
            # Lost the lock to a switch started a moment earlier by a killed agent's
            # run: when that one ends on the target, the target is running after all.
            if (
                self.switch_lock_held()
                and await self._await_running_switch()
                and await self._adopted(closure)
            ):
                return FiredAndPolled()
            return SwitchFailed(
                phase=SWITCH_EXIT, exit_code=end.exit_code, stderr_tail=stderr_tail(end.output)
            )
        return SwitchFailed(
            phase=SWITCH_POLL_TIMEOUT,
            exit_code=end.exit_code,
            stderr_tail=stderr_tail(end.output) or None,
        )

    async def _defer(self, closure: ClosureHash, component: str) -> ActivationOutcome:
        log.info("switch deferred to next boot closure=%s component=%s", closure, component)
        argv = [f"{store_path(closure)}/bin/switch-to-configuration", "boot"]
        try:
            res = await run_command(argv, timeout=self.switch_timeout)
        except SpawnError as exc:
            return SwitchFailed(phase=DEFER_BOOTLOADER_UPDATE, exit_code=127, stderr_tail=str(exc))
        except TimeoutError:
            return SwitchFailed(phase=DEFER_BOOTLOADER_UPDATE, stderr_tail="timed out")
        if res.returncode != 0:
            return SwitchFailed(
                phase=DEFER_BOOTLOADER_UPDATE,
                exit_code=res.returncode,
                stderr_tail=stderr_tail(res.stderr),
            )
        return DeferredPendingReboot(component=component)

    async def _fix_drift(self, closure: ClosureHash) -> None:
        if self.profile_system() == closure:
            return
        log.warning("profile drifted after switch; setting it again closure=%s", closure)
        with contextlib.suppress(SpawnError, TimeoutError):
            await self._nix_env(["--set", store_path(closure)])

    async def _nix_env(self, args: Sequence[str]) -> CommandResult:
        try:
            return await run_command(
                [self.nix_env, "--profile", str(self.profile), *args],
                timeout=COMMAND_TIMEOUT_SECS,
            )
        except TimeoutError:
            return CommandResult(-1, "", f"nix-env {' '.join(args)} timed out")

    # --- firing a switch and waiting for it -----------------------------------------------

    async def _fire(self, closure: ClosureHash, unit: str) -> _Fired | SwitchFailed:
        """Start `<closure>/bin/switch-to-configuration switch`: a transient systemd unit,
        or a child in its own session writing to the switch log."""
        script = f"{store_path(closure)}/bin/switch-to-configuration"
        if self.systemd:
            with contextlib.suppress(SpawnError, TimeoutError):
                await run_command(
                    [self.systemctl, "reset-failed", f"{unit}.service"],
                    timeout=COMMAND_TIMEOUT_SECS,
                )
            try:
                res = await run_command(
                    [self.systemd_run, f"--unit={unit}", "--collect", "--", script, "switch"],
                    timeout=COMMAND_TIMEOUT_SECS,
                )
            except (SpawnError, TimeoutError) as exc:
                return SwitchFailed(phase=SYSTEMD_RUN_FIRE, stderr_tail=str(exc) or "timed out")
            if res.returncode != 0:
                return SwitchFailed(
                    phase=SYSTEMD_RUN_FIRE,
                    exit_code=res.returncode,
                    stderr_tail=stderr_tail(res.stderr),
                )
            return _Fired(unit=unit, proc=None, log=None)
        # Own session: a signal to the agent's process group does not reach the switch,
        # and its output goes to a file, not to a pipe that would die with the agent.
        if self.switch_log is not None:
            log_path, temporary = self.switch_log, False
        else:
            fd, name = tempfile.mkstemp(prefix="nixfleet-switch-", suffix=".log")
            os.close(fd)
            log_path, temporary = Path(name), True
        try:
            # Truncated per switch: the log holds the last switch's output only.
            with open(log_path, "wb") as log_fh:
                proc = await asyncio.create_subprocess_exec(
                    script,
                    "switch",
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_fh,
                    stderr=log_fh,
                    start_new_session=True,
                )
        except OSError as exc:
            if temporary:
                log_path.unlink(missing_ok=True)
            return SwitchFailed(
                phase=SWITCH_EXIT, exit_code=127, stderr_tail=f"cannot run {script} ({exc})"
            )
        return _Fired(unit=unit, proc=proc, log=log_path, temporary=temporary)

    async def _settle(
        self, fired: _Fired, *, expected: ClosureHash, previous: ClosureHash | None
    ) -> _Settle:
        """Poll the current-system link until it is `expected` (and, inline, the switch
        has exited), it shows a third closure (systemd), the switch exited (inline), or
        the bound passes."""
        proc = fired.proc
        deadline = time.monotonic() + self.switch_timeout
        try:
            while True:
                actual = self.current_system()
                exited = proc is not None and proc.returncode is not None
                if actual == expected and (proc is None or exited):
                    return await self._ended(fired, actual, timed_out=False)
                if proc is None and actual is not None and actual not in (expected, previous):
                    return await self._ended(fired, actual, timed_out=False)
                if exited:
                    return await self._ended(fired, actual, timed_out=False)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if proc is not None:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(proc.pid, signal.SIGKILL)
                        await proc.wait()
                    return await self._ended(fired, self.current_system(), timed_out=True)
                if proc is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(proc.wait(), min(remaining, self.poll_interval))
                else:
                    await asyncio.sleep(min(remaining, self.poll_interval))
        finally:
            if fired.temporary and fired.log is not None:
                fired.log.unlink(missing_ok=True)

    async def _ended(
        self, fired: _Fired, actual: ClosureHash | None, *, timed_out: bool
    ) -> _Settle:
        output = ""
        if fired.log is not None:
            try:
                with open(fired.log, "rb") as fh:
                    output = fh.read()[-64 * 1024 :].decode("utf-8", "replace")
            except OSError:
                output = ""
        if fired.proc is not None:
            exit_code = fired.proc.returncode
        else:
            exit_code = await self._unit_exit_status(fired.unit) if timed_out else None
        return _Settle(
            actual=actual,
            exited=fired.proc is not None and not timed_out,
            exit_code=exit_code,
            output=output,
        )

    async def _unit_exit_status(self, unit: str) -> int | None:
        try:
            res = await run_command(
                [self.systemctl, "show", "-p", "ExecMainStatus", "--value", f"{unit}.service"],
                timeout=COMMAND_TIMEOUT_SECS,
            )
        except (SpawnError, TimeoutError):
            return None
        text = res.stdout.strip()
        return int(text) if res.returncode == 0 and text.isdigit() else None

    # --- rollback ---------------------------------------------------------------------------

    async def rollback(self) -> RollbackDone:
        try:
            return await self._rollback()
        except SpawnError as exc:
            return RollbackDone(
                ok=False, phase=NIX_ENV_ROLLBACK, stderr_tail=str(exc),
                current_closure=self.current_system(),
            )  # fmt: skip

    async def _rollback(self) -> RollbackDone:
        before = self.current_system()
        res = await self._nix_env(["--rollback"])
        if res.returncode != 0:
            return RollbackDone(
                ok=False,
                phase=NIX_ENV_ROLLBACK,
                exit_code=res.returncode,
                stderr_tail=stderr_tail(res.stderr),
                current_closure=before,
            )
        target = self.profile_system()
        if target is None:
            return RollbackDone(ok=False, phase=DISCOVER_TARGET, current_closure=before)
        log.info("rollback switch closure=%s from=%s systemd=%s", target, before, self.systemd)
        fired = await self._fire(target, ROLLBACK_UNIT)
        if isinstance(fired, SwitchFailed):
            return RollbackDone(
                ok=False,
                phase=SYSTEMD_RUN_FIRE if self.systemd else ROLLBACK_SWITCH_EXIT,
                exit_code=fired.exit_code,
                stderr_tail=fired.stderr_tail,
                current_closure=self.current_system(),
            )
        end = await self._settle(fired, expected=target, previous=before)
        if end.actual == target:
            return RollbackDone(ok=True, current_closure=target)
        phase = ROLLBACK_SWITCH_EXIT if end.exited and not self.systemd else ROLLBACK_POLL_TIMEOUT
        return RollbackDone(
            ok=False,
            phase=phase,
            exit_code=end.exit_code,
            stderr_tail=stderr_tail(end.output) or None,
            current_closure=end.actual,
        )
