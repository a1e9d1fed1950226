"""Real Nix for the local fleet: the environment every nix call gets, and fake
NixOS system closures built by real `nix-build` (no nixpkgs).

Nothing here touches the machine's own `/nix`. Every nix command runs in a private
mount namespace with a directory of ours bind-mounted over `/nix`
(`unshare --mount --propagation private`, then `mount --bind DIR/nix /nix`), so
store paths stay `/nix/store/<hash>-<name>` (one binary cache serves every host and
hashes match production) while the files, the DB and the profiles live under the
test's temp dir. `NIX_STORE_DIR` is never used: it changes every hash.

A system closure for host `h1`, generation `2`:

    /nix/store/<32-char hash>-nixos-system-h1-2/
        bin/switch-to-configuration   # fake activation (below)
        sw -> /nix/store/<hash>-fleet-pkg-h1-2      # the "package": ≥ 2 paths, Refs rows
        extra-<i> -> /nix/store/<hash>-fleet-extra-h1-2-<i>   (extra_paths)
        hostname, nixos-version

`bin/switch-to-configuration switch|test` points the host's current-system link
(baked in at build time, an absolute path outside /nix) at the closure's own store
path, atomically (`ln -sfn` to a temp name, then `mv -T` over the link); `boot`
changes nothing, `dry-activate` does nothing. Built with `fail=True` it exits
`FAIL_EXIT_CODE` (4, as NixOS's does when units fail) without touching the link.
With an activation log it appends `<unix time> <action> <begin|ok|failed> <path>`
lines, so a test can count activations. With a lock file it holds `flock` on it while
it runs and exits 1 ("Could not acquire lock") if another switch holds it, as NixOS's
does with /run/nixos/switch-to-configuration.lock; `switch_delay_secs` sleeps (lock
held) before switching, to catch an agent mid-activation.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nixfleet.core.closure import STORE_DIR, StorePath, parse_store_path

FAIL_EXIT_CODE = 4
"""Exit status of a closure built with `fail=True` (NixOS: "some units failed")."""

SIGNATURE_PHRASES = (
    "lacks a valid signature",
    "no signature is trusted",
    "is not signed by any of the keys",
    "no signatures matched",
    "signature mismatch",
    "untrusted signature",
)
"""Stderr phrases (case-insensitive) that mean a signature refusal (lifecycle §5.3)."""

NS_SCRIPT = 'mount --bind "$0" /nix && exec "$@"'
"""`sh -c` body run by `unshare`: `$0` is the private nix dir, `$@` the command."""

_SCRUBBED = (
    "NIX_REMOTE",
    "NIX_STORE",
    "NIX_STORE_DIR",
    "NIX_STATE_DIR",
    "NIX_LOG_DIR",
    "NIX_DATA_DIR",
    "NIX_CONFIG",
    "NIX_PATH",
    "NIX_USER_CONF_FILES",
)
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def has_signature_phrase(text: str) -> bool:
    low = text.lower()
    return any(p in low for p in SIGNATURE_PHRASES)


class NixCommandError(RuntimeError):
    """A nix command exited non-zero; carries argv, status and stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = "\n".join(stderr.strip().splitlines()[-8:])
        super().__init__(f"{' '.join(self.argv)} exited {returncode}: {tail}")


@dataclass(frozen=True, slots=True, kw_only=True)
class NixEnv:
    """The environment of every nix call of one simulated machine (builder or host).

    `NIX_CONFIG` always carries `experimental-features = nix-command`, `sandbox =
    false` and `build-users-group =` (builds run as root, no nixbld users needed),
    `narinfo-cache-negative-ttl = 0`, the substituters (empty: no 4 s wait for the
    public cache) and the trusted keys. `HOME`, `XDG_CACHE_HOME` and `TMPDIR` point
    into the machine's own dir so nix writes nothing elsewhere (`nix-env` would
    create `~/.nix-defexpr`, the narinfo cache lives in `$XDG_CACHE_HOME/nix`).
    `download_attempts` is 1 (nix's default 5 spends ~4.6 s in backoff per
    unreachable file).
    """

    home: Path
    xdg_cache_home: Path
    tmpdir: Path
    substituters: tuple[str, ...] = ()
    trusted_public_keys: tuple[str, ...] = ()
    download_attempts: int = 1
    connect_timeout_secs: int = 5
    extra_config: Mapping[str, str] = field(default_factory=dict)

    def settings(self) -> dict[str, str]:
        settings = {
            "experimental-features": "nix-command",
            "sandbox": "false",
            "build-users-group": "",
            "substituters": " ".join(self.substituters),
            "narinfo-cache-negative-ttl": "0",
            "download-attempts": str(self.download_attempts),
            "connect-timeout": str(self.connect_timeout_secs),
        }
        if self.trusted_public_keys:
            settings["trusted-public-keys"] = " ".join(self.trusted_public_keys)
        settings.update(self.extra_config)
        return settings

    def nix_config(self) -> str:
        return "".join(f"{k} = {v}\n" for k, v in self.settings().items())

    def options(self) -> list[str]:
        """The same settings as `--option NAME VALUE` arguments."""
        out: list[str] = []
        for k, v in self.settings().items():
            out += ["--option", k, v]
        return out

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        for name in _SCRUBBED:
            env.pop(name, None)
        for d in (self.home, self.xdg_cache_home, self.tmpdir):
            d.mkdir(parents=True, exist_ok=True)
        env.update(
            NIX_CONFIG=self.nix_config(),
            HOME=str(self.home),
            XDG_CACHE_HOME=str(self.xdg_cache_home),
            TMPDIR=str(self.tmpdir),
            PATH=_PATH,
        )
        return env


def in_namespace(nix_dir: Path, argv: Sequence[str]) -> list[str]:
    """argv running `argv` with `nix_dir` bind-mounted over /nix in a new mount namespace.

    No `--fork`: unshare execs sh, sh execs the command, so a Popen's PID is the
    command's own PID and can be stopped directly.
    """
    unshare = shutil.which("unshare", path=_PATH) or "unshare"
    return [
        unshare,
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        NS_SCRIPT,
        str(nix_dir),
        *argv,
    ]


def run_in_namespace(
    nix_dir: Path,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    check: bool = True,
    timeout: float = 120.0,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    nix_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        in_namespace(nix_dir, argv),
        env=dict(env),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise NixCommandError(argv, proc.returncode, proc.stderr)
    return proc


SYSTEM_NIX = textwrap.dedent(
    r"""
    # Fake NixOS system closures for the nixfleet harness (no nixpkgs; builder /bin/sh).
    { host, gen, currentSystem, activationLog ? "", fail ? "0", failExitCode ? "4"
    , delay ? "0", extra ? "0", extraBytes ? "0", variant ? "", lockFile ? "" }:
    let
      system = builtins.currentSystem;
      mk = name: script: attrs: derivation ({
        inherit name system;
        builder = "/bin/sh";
        args = [ "-c" script ];
        PATH = "/usr/bin:/bin";
      } // attrs);
      pkg = mk "fleet-pkg-${host}-${gen}" ''
        mkdir -p $out/bin
        printf '#!/bin/sh\necho %s\n' "$msg" > $out/bin/fleet-hello
        chmod +x $out/bin/fleet-hello
      '' { msg = "${host}-${gen}"; };
      extras = builtins.genList (i: mk "fleet-extra-${host}-${gen}-${toString i}" ''
        mkdir -p $out
        head -c "$bytes" /dev/urandom > $out/blob
      '' { bytes = extraBytes; }) (builtins.fromJSON extra);
    in mk "nixos-system-${host}-${gen}" ''
      mkdir -p $out/bin
      ln -s $pkg $out/sw
      n=0
      for e in $extras; do ln -s $e $out/extra-$n; n=$((n + 1)); done
      printf '%s\n' "$host" > $out/hostname
      printf '%s\n' "$gen" > $out/nixos-version
      cat > $out/bin/switch-to-configuration <<EOF
    #!/bin/sh
    # Fake NixOS switch-to-configuration (nixfleet harness) for nixos-system-$host-$gen.
    PATH=/usr/bin:/bin
    self='$self'
    link='$currentSystem'
    log='$activationLog'
    lockf='$lockFile'
    action="\$1"
    note() {
      [ -z "\$log" ] ||
        printf '%s %s %s %s\n' "\$(date +%s.%N)" "\$action" "\$1" "\$self" >> "\$log"
    }
    case "\$action" in
      switch|test|boot) ;;
      dry-activate) exit 0 ;;
      *) echo "usage: switch-to-configuration switch|boot|test|dry-activate" >&2; exit 1 ;;
    esac
    if [ -n "\$lockf" ]; then
      mkdir -p "\$(dirname "\$lockf")"
      exec 9>>"\$lockf"
      flock -n 9 || { echo "Could not acquire lock \$lockf" >&2; exit 1; }
    fi
    note begin
    if [ "$delay" != 0 ]; then sleep $delay; fi
    if [ "$fail" = 1 ]; then
      note failed
      echo "switch-to-configuration: activating \$self failed (closure built to fail)" >&2
      exit $failExitCode
    fi
    if [ "\$action" != boot ]; then
      tmp="\$link.tmp.\$\$"
      ln -sfn "\$self" "\$tmp" && mv -fT "\$tmp" "\$link" || { note failed; exit 1; }
    fi
    note ok
    EOF
      chmod +x $out/bin/switch-to-configuration
    '' {
      inherit pkg extras host gen currentSystem activationLog fail failExitCode delay variant
        lockFile;
      self = builtins.placeholder "out";
    }
    """
).lstrip()


@dataclass
class NixBuilder:
    """The machine that builds closures: its own private store under `dir/nix`."""

    dir: Path
    env: NixEnv

    @classmethod
    def create(cls, dir: Path) -> NixBuilder:
        dir.mkdir(parents=True, exist_ok=True)
        (dir / "nix").mkdir(exist_ok=True)
        (dir / "system.nix").write_text(SYSTEM_NIX)
        env = NixEnv(home=dir / "home", xdg_cache_home=dir / "cache", tmpdir=dir / "tmp")
        return cls(dir=dir, env=env)

    @property
    def nix_dir(self) -> Path:
        return self.dir / "nix"

    @property
    def expr_file(self) -> Path:
        return self.dir / "system.nix"

    @property
    def db_path(self) -> Path:
        return self.nix_dir / "var/nix/db/db.sqlite"

    def on_disk(self, path: StorePath | str) -> Path:
        """Where `/nix/store/<basename>` of this store lives outside the namespace."""
        sp = path if isinstance(path, StorePath) else parse_store_path(path)
        return self.nix_dir / "store" / sp.basename

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return run_in_namespace(
            self.nix_dir, argv, self.env.environ(), check=check, timeout=timeout
        )

    def build_system_closure(
        self,
        host: str,
        generation: str | int,
        *,
        current_system_link: Path,
        fail: bool = False,
        extra_paths: int = 0,
        extra_bytes: int = 0,
        activation_log: Path | None = None,
        switch_delay_secs: float = 0,
        variant: str = "",
        lock_file: Path | None = None,
    ) -> StorePath:
        """Build `nixos-system-<host>-<generation>` and return its store path.

        `variant` changes the hash but not the name (e.g. a second, differently signed
        closure for the same host and generation).
        """
        args = {
            "host": host,
            "gen": str(generation),
            "currentSystem": str(current_system_link),
            "activationLog": "" if activation_log is None else str(activation_log),
            "fail": "1" if fail else "0",
            "failExitCode": str(FAIL_EXIT_CODE),
            "delay": f"{switch_delay_secs:g}",
            "extra": str(extra_paths),
            "extraBytes": str(extra_bytes),
            "variant": variant,
            "lockFile": "" if lock_file is None else str(lock_file),
        }
        argv = ["nix-build", "--no-out-link", str(self.expr_file)]
        for k, v in args.items():
            argv += ["--argstr", k, v]
        out = self.run(argv).stdout.strip().splitlines()
        if not out:
            raise NixCommandError(argv, 0, "nix-build printed no output path")
        sp = parse_store_path(out[-1], source="nix-build")
        if sp.name != f"nixos-system-{host}-{generation}":
            raise NixCommandError(argv, 0, f"unexpected output path {out[-1]!r}")
        return sp

    def closure(self, path: StorePath | str) -> list[StorePath]:
        """`nix-store -qR`: the path and everything it references."""
        p = path.path if isinstance(path, StorePath) else path
        lines = self.run(["nix-store", "--query", "--requisites", p]).stdout.split()
        return [parse_store_path(ln) for ln in lines]

    def references(self, path: StorePath | str) -> list[str]:
        """Refs rows of `path` in this store's DB (full store paths it refers to)."""
        p = path.path if isinstance(path, StorePath) else path
        return refs_rows(self.db_path, p)


def refs_rows(db_path: Path, path: str) -> list[str]:
    """The `Refs` rows of `path` in a store DB, as referenced store paths (sorted)."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT t.path FROM Refs r JOIN ValidPaths f ON r.referrer = f.id "
            "JOIN ValidPaths t ON r.reference = t.id WHERE f.path = ? ORDER BY t.path",
            (path,),
        ).fetchall()
    finally:
        con.close()
    return [str(r[0]) for r in rows]


def build_system_closure(
    builder: NixBuilder,
    host: str,
    generation: str | int,
    *,
    current_system_link: Path,
    fail: bool = False,
    extra_paths: int = 0,
    extra_bytes: int = 0,
    activation_log: Path | None = None,
    switch_delay_secs: float = 0,
    variant: str = "",
    lock_file: Path | None = None,
) -> StorePath:
    """Module-level form of `NixBuilder.build_system_closure`."""
    return builder.build_system_closure(
        host,
        generation,
        current_system_link=current_system_link,
        fail=fail,
        extra_paths=extra_paths,
        extra_bytes=extra_bytes,
        activation_log=activation_log,
        switch_delay_secs=switch_delay_secs,
        variant=variant,
        lock_file=lock_file,
    )


__all__ = [
    "FAIL_EXIT_CODE",
    "SIGNATURE_PHRASES",
    "STORE_DIR",
    "NixBuilder",
    "NixCommandError",
    "NixEnv",
    "StorePath",
    "build_system_closure",
    "has_signature_phrase",
    "in_namespace",
    "refs_rows",
    "run_in_namespace",
]
