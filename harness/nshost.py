"""One simulated host's Nix world: a private `/nix` (store, DB, profiles) in a mount
namespace of its own, plus its current-system and booted-system links, state dir,
XDG cache and home, all under one directory.

Layout of `HostRoot(dir)`:

    dir/nix/                      bind-mounted over /nix inside the host's namespace
    dir/nix/var/nix/profiles/system    the system profile (inside: /nix/var/nix/profiles/system)
    dir/run/current-system        the host's /run/current-system (absolute path, no namespace)
    dir/run/booted-system         the host's /run/booted-system
    dir/run/switch.log            activation log written by the fake switch-to-configuration
    dir/run/nixos/switch-to-configuration.lock    flock'd by the fake switch while it runs
    dir/state/                    the agent's --state-dir
    dir/cache/ dir/home/ dir/tmp/ XDG_CACHE_HOME, HOME, TMPDIR of every nix call

`run_in_host(argv, root, env)` starts a process with `dir/nix` mounted over `/nix`
(`unshare --mount --propagation private sh -c 'mount --bind DIR/nix /nix && exec
"$@"'`): every `/nix/store/<basename>` it sees is that host's store, so an agent
running there uses the production commands unchanged:

    realise   nix-store --realise /nix/store/<basename>
              (substituters / trusted-public-keys / narinfo-cache-negative-ttl 0 /
               download-attempts 1 come from NIX_CONFIG, see `HostRoot.environ`; the
               same as --option substituters URL --option trusted-public-keys KEY …)
    set       nix-env --profile /nix/var/nix/profiles/system --set /nix/store/<basename>
    switch    /nix/store/<basename>/bin/switch-to-configuration switch
    rollback  nix-env --profile /nix/var/nix/profiles/system --rollback
              then /nix/store/<previous>/bin/switch-to-configuration switch
              (<previous>: readlink of the profile's link, then of system-N-link)

The current-system link is outside /nix, so tests read it without entering the
namespace; generations are read from the `system-N-link` symlinks. Nix 2.8's
`--set` compares with the *newest* generation, not the current one: after a
rollback, setting the newest generation's path again reuses that number; any other
path makes a new, higher one.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.binarycache import BinaryCache
from harness.nixfixture import (
    NixBuilder,
    NixCommandError,
    NixEnv,
    has_signature_phrase,
    in_namespace,
    run_in_namespace,
)
from nixfleet.core.closure import ClosureHash, StorePath, closure_hash_from_path, parse_store_path
from nixfleet.core.errors import ParseError

PROFILE = Path("/nix/var/nix/profiles/system")
"""The system profile as the host's processes see it (the production default)."""

_GEN_LINK = re.compile(r"^system-(\d+)-link$")


@functools.cache
def namespaces_available() -> bool:
    """Whether `unshare --mount` plus a bind mount over /nix works here (needs root)."""
    if not Path("/nix").is_dir():
        return False
    try:
        proc = subprocess.run(
            in_namespace(Path("/nix"), ["true"]),
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Generation:
    number: int
    basename: ClosureHash
    link: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class Activation:
    """One line of the fake switch-to-configuration's log."""

    at: float
    action: str
    event: str  # begin | ok | failed
    basename: ClosureHash


def _basename_of_link(link: Path) -> ClosureHash | None:
    try:
        target = os.readlink(link)
    except OSError:
        return None
    try:
        return closure_hash_from_path(target)
    except ParseError:
        return None


class HostRoot:
    """A simulated host's private Nix world under `dir` (see the module docstring)."""

    def __init__(
        self,
        dir: Path,
        hostname: str,
        *,
        substituters: Sequence[str] = (),
        trusted_public_keys: Sequence[str] = (),
        download_attempts: int = 1,
    ) -> None:
        self.dir = dir
        self.hostname = hostname
        self.substituters = tuple(substituters)
        self.trusted_public_keys = tuple(trusted_public_keys)
        self.download_attempts = download_attempts
        for d in (self.nix_dir, self.run_dir, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)

    @classmethod
    def create(
        cls,
        dir: Path,
        hostname: str,
        cache: BinaryCache | None = None,
        *,
        download_attempts: int = 1,
    ) -> HostRoot:
        """A host whose nix substitutes from `cache` and trusts only its key."""
        return cls(
            dir,
            hostname,
            substituters=() if cache is None else (cache.url,),
            trusted_public_keys=() if cache is None else (cache.public_key,),
            download_attempts=download_attempts,
        )

    # --- layout -----------------------------------------------------------------------

    @property
    def nix_dir(self) -> Path:
        return self.dir / "nix"

    @property
    def store_dir(self) -> Path:
        return self.nix_dir / "store"

    @property
    def db_path(self) -> Path:
        return self.nix_dir / "var/nix/db/db.sqlite"

    @property
    def profile(self) -> Path:
        """The profile path inside the namespace (pass this to the agent)."""
        return PROFILE

    @property
    def profile_on_disk(self) -> Path:
        return self.nix_dir / PROFILE.relative_to("/nix")

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def current_system(self) -> Path:
        return self.run_dir / "current-system"

    @property
    def booted_system(self) -> Path:
        return self.run_dir / "booted-system"

    @property
    def activation_log(self) -> Path:
        return self.run_dir / "switch.log"

    @property
    def switch_lock(self) -> Path:
        """The host's /run/nixos/switch-to-configuration.lock (flock'd by the fake switch)."""
        return self.run_dir / "nixos" / "switch-to-configuration.lock"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def xdg_cache_home(self) -> Path:
        return self.dir / "cache"

    def nix_env(self) -> NixEnv:
        return NixEnv(
            home=self.dir / "home",
            xdg_cache_home=self.xdg_cache_home,
            tmpdir=self.dir / "tmp",
            substituters=self.substituters,
            trusted_public_keys=self.trusted_public_keys,
            download_attempts=self.download_attempts,
        )

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for the host's processes (NIX_CONFIG, HOME, XDG_CACHE_HOME…)."""
        return self.nix_env().environ(base)

    def on_disk(self, path: StorePath | str) -> Path:
        sp = path if isinstance(path, StorePath) else parse_store_path(path)
        return self.store_dir / sp.basename

    # --- running things inside --------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = False,
        timeout: float = 120.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the host's namespace and wait (text output captured)."""
        return run_in_namespace(
            self.nix_dir,
            argv,
            self.environ() if env is None else env,
            check=check,
            timeout=timeout,
        )

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return run_in_host(argv, self, kwargs.pop("env", None), **kwargs)

    # --- the agent adapter's commands -------------------------------------------------

    def realise(
        self, path: StorePath | str, *, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """`nix-store --realise PATH` from the host's substituters (checked signatures)."""
        return self.run(["nix-store", "--realise", _full(path)], timeout=timeout)

    def set_profile(self, path: StorePath | str) -> subprocess.CompletedProcess[str]:
        return self.run(["nix-env", "--profile", str(PROFILE), "--set", _full(path)])

    def switch(
        self, path: StorePath | str | None = None, action: str = "switch"
    ) -> subprocess.CompletedProcess[str]:
        """`<path>/bin/switch-to-configuration <action>` (default path: the profile)."""
        base = str(PROFILE) if path is None else _full(path)
        return self.run([f"{base}/bin/switch-to-configuration", action])

    def rollback(self) -> subprocess.CompletedProcess[str]:
        """`nix-env --rollback`, then the previous closure's switch (lifecycle §5.7)."""
        proc = self.run(["nix-env", "--profile", str(PROFILE), "--rollback"])
        if proc.returncode != 0:
            return proc
        target = self.profile_target()
        if target is None:
            return subprocess.CompletedProcess(
                proc.args, 1, proc.stdout, proc.stderr + "profile target unreadable\n"
            )
        return self.switch(target)

    def activate(self, path: StorePath | str) -> None:
        """Realise, set and switch; raise NixCommandError on the first failing step."""
        for step in (self.realise, self.set_profile, self.switch):
            proc = step(path)
            if proc.returncode != 0:
                raise NixCommandError(proc.args, proc.returncode, proc.stderr)

    def provision(self, path: StorePath | str) -> None:
        """Install the first system: activate it and point booted-system at it too."""
        self.activate(path)
        _atomic_symlink(_full(path), self.booted_system)

    def is_valid(self, path: StorePath | str) -> bool:
        """`nix-store --check-validity` in the host's store."""
        return self.run(["nix-store", "--check-validity", _full(path)]).returncode == 0

    # --- reading state from outside ---------------------------------------------------

    def current_system_basename(self) -> ClosureHash | None:
        return _basename_of_link(self.current_system)

    def booted_system_basename(self) -> ClosureHash | None:
        return _basename_of_link(self.booted_system)

    def generations(self) -> list[Generation]:
        """Profile generations from the `system-N-link` symlinks, oldest first."""
        profiles = self.profile_on_disk.parent
        if not profiles.is_dir():
            return []
        gens = []
        for entry in profiles.iterdir():
            m = _GEN_LINK.match(entry.name)
            base = _basename_of_link(entry) if m else None
            if m and base is not None:
                gens.append(Generation(number=int(m.group(1)), basename=base, link=entry))
        return sorted(gens, key=lambda g: g.number)

    def current_generation(self) -> int | None:
        try:
            m = _GEN_LINK.match(os.readlink(self.profile_on_disk))
        except OSError:
            return None
        return int(m.group(1)) if m else None

    def profile_target(self) -> ClosureHash | None:
        """The basename the profile points at (its two-level link resolved)."""
        try:
            link = os.readlink(self.profile_on_disk)
        except OSError:
            return None
        return _basename_of_link(self.profile_on_disk.parent / link)

    def activations(self) -> list[Activation]:
        if not self.activation_log.exists():
            return []
        out = []
        for ln in self.activation_log.read_text().splitlines():
            parts = ln.split(" ")
            if len(parts) == 4:
                out.append(
                    Activation(
                        at=float(parts[0]),
                        action=parts[1],
                        event=parts[2],
                        basename=closure_hash_from_path(parts[3]),
                    )
                )
        return out


def build_host_system(
    builder: NixBuilder,
    host: HostRoot,
    generation: str | int,
    *,
    fail: bool = False,
    extra_paths: int = 0,
    extra_bytes: int = 0,
    switch_delay_secs: float = 0,
    variant: str = "",
) -> StorePath:
    """`nixos-system-<hostname>-<generation>` wired to this host's current-system link,
    activation log and switch lock."""
    return builder.build_system_closure(
        host.hostname,
        generation,
        current_system_link=host.current_system,
        activation_log=host.activation_log,
        lock_file=host.switch_lock,
        fail=fail,
        extra_paths=extra_paths,
        extra_bytes=extra_bytes,
        switch_delay_secs=switch_delay_secs,
        variant=variant,
    )


def build_and_push(
    builder: NixBuilder,
    cache: BinaryCache,
    hosts: Sequence[HostRoot],
    generation: str | int,
    *,
    failing: Collection[str] = (),
    unknown_key: Collection[str] = (),
) -> dict[str, StorePath]:
    """One release: a closure per host (by hostname), pushed signed to `cache`.

    Hosts named in `failing` get a closure whose switch fails; those in `unknown_key`
    one signed only by the cache's unknown key (a distinct `variant`, so the hash is
    new even if a good closure of that generation was pushed before).
    """
    out: dict[str, StorePath] = {}
    for host in hosts:
        rogue = host.hostname in unknown_key
        path = build_host_system(
            builder,
            host,
            generation,
            fail=host.hostname in failing,
            variant="unknown-key" if rogue else "",
        )
        if rogue:
            cache.push_unknown(path)
        else:
            cache.push(path)
        out[host.hostname] = path
    return out


def run_in_host(
    argv: Sequence[str],
    root: HostRoot,
    env: Mapping[str, str] | None = None,
    *,
    wrap: Sequence[str] = (),
    **popen_kwargs: Any,
) -> subprocess.Popen[bytes]:
    """Start `argv` in a new mount namespace with `root`'s private /nix over /nix.

    The returned Popen's PID is the command's own (unshare and sh exec), so stop it
    with `terminate()`/`wait()`/`kill()`. `env` defaults to `root.environ()`; pass
    `{**root.environ(), **extra}` to add variables. `wrap` prefixes the command, e.g.
    `("ip", "netns", "exec", "fleet-h1")` (which also execs, keeping the PID).
    """
    root.nix_dir.mkdir(parents=True, exist_ok=True)
    full_env = root.environ() if env is None else dict(env)
    return subprocess.Popen(
        [*wrap, *in_namespace(root.nix_dir, argv)], env=full_env, **popen_kwargs
    )


def _full(path: StorePath | str) -> str:
    if isinstance(path, StorePath):
        return path.path
    return parse_store_path(path).path


def _atomic_symlink(target: str, link: Path) -> None:
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)


__all__ = [
    "PROFILE",
    "Activation",
    "Generation",
    "HostRoot",
    "build_and_push",
    "build_host_system",
    "has_signature_phrase",
    "namespaces_available",
    "run_in_host",
]
