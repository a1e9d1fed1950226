"""The ssh backend's inventory: which hosts it drives and how to reach them (TOML).

    # lab.toml
    known_hosts = "known_hosts"          # the hosts' keys (paramiko RejectPolicy: must be listed)

    [[host]]
    name = "h1"                          # the host's fleet name (its agent's --machine-id)
    address = "127.0.0.1"
    port = 2201
    user = "root"                        # default root
    key = "client_key"                   # the harness's SSH private key
    role = "agent"                       # agent (default) | cp
    private = true                       # the backend starts this host itself (below)
    dir = "/var/lib/nixfleet-lab/h1"     # external hosts: the agent's files, state and log
    unit = "nixfleet-agent.service"      # external hosts: the agent runs as this systemd unit

A `private` host is one the ssh backend starts for the run (harness.sshhosts): an sshd
on 127.0.0.1 (`port` 0 or left out: any free one) whose sessions land in a host world
in the run's directory; its host key is new each run, so the backend writes the
known_hosts itself, and `key` is generated when the file does not exist yet.

Relative paths are relative to the inventory file. A bad file is one `BadInput` line
(`fleet-harness` exits 2 with it), never a traceback. `write` makes the inventory of
the private sshd hosts the backend starts itself (harness.sshhosts), so both paths read
the same file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixfleet.core.errors import BadInput

ROLES = ("agent", "cp")
HOST_KEYS = {
    "name",
    "address",
    "port",
    "user",
    "key",
    "role",
    "private",
    "dir",
    "unit",
    "known_hosts",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class InventoryHost:
    name: str
    address: str
    port: int = 22
    user: str = "root"
    key: Path
    role: str = "agent"
    private: bool = False
    """Started by the backend for the run (see the module docstring)."""
    dir: str | None = None
    """An external host's directory for the agent: installed files, state dir, log."""
    known_hosts: Path | None = None
    unit: str | None = None
    """The systemd unit the agent runs as (None: the backend runs it as a process)."""

    @property
    def where(self) -> str:
        """`name (user@address:port)`, as reports name the host."""
        return f"{self.name} ({self.user}@{self.address}:{self.port})"


@dataclass(frozen=True, slots=True)
class Inventory:
    path: Path
    hosts: tuple[InventoryHost, ...]

    @property
    def agents(self) -> list[InventoryHost]:
        return [h for h in self.hosts if h.role == "agent"]

    @property
    def cp(self) -> InventoryHost | None:
        return next((h for h in self.hosts if h.role == "cp"), None)

    def host(self, name: str) -> InventoryHost:
        return next(h for h in self.hosts if h.name == name)


def load(path: Path) -> Inventory:
    """Parse and check `path`; BadInput names the first problem in one line."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise BadInput(f"inventory {path}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"inventory {path}: not TOML ({exc})") from None
    return parse(data, path)


def parse(data: Mapping[str, Any], path: Path) -> Inventory:
    base = path.parent
    default_known = data.get("known_hosts")
    raw_hosts = data.get("host")
    if not isinstance(raw_hosts, list) or not raw_hosts:
        raise BadInput(f"inventory {path}: no [[host]] entries")
    hosts: list[InventoryHost] = []
    for i, raw in enumerate(raw_hosts, 1):
        if not isinstance(raw, dict):
            raise BadInput(f"inventory {path}: host #{i} is not a table")
        hosts.append(_host(raw, i, path, base, default_known))
    names = [h.name for h in hosts]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise BadInput(f"inventory {path}: host {dup!r} listed twice")
    if not any(h.role == "agent" for h in hosts):
        raise BadInput(f"inventory {path}: no host with role agent")
    if sum(h.role == "cp" for h in hosts) > 1:
        raise BadInput(f"inventory {path}: more than one host with role cp")
    return Inventory(path, tuple(hosts))


def _host(
    raw: Mapping[str, Any], i: int, path: Path, base: Path, default_known: object
) -> InventoryHost:
    where = f"inventory {path}: host #{i}"
    unknown = sorted(set(raw) - HOST_KEYS)
    if unknown:
        raise BadInput(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(HOST_KEYS))})"
        )
    private = raw.get("private", False)
    if not isinstance(private, bool):
        raise BadInput(f"{where}: private must be true or false")
    for req in ("name", "address", "key") if private else ("name", "address", "key", "dir"):
        if not isinstance(raw.get(req), str) or not raw[req]:
            raise BadInput(f"{where}: {req!r} missing or not a string")
    if private and raw["address"] != "127.0.0.1":
        raise BadInput(f"{where} ({raw['name']}): a private host listens on 127.0.0.1 only")
    port = raw.get("port", 0 if private else 22)
    if not isinstance(port, int) or not (0 if private else 1) <= port < 65536:
        raise BadInput(f"{where} ({raw['name']}): port {port!r} is not a TCP port")
    role = raw.get("role", "agent")
    if role not in ROLES:
        raise BadInput(f"{where} ({raw['name']}): role {role!r} not in {ROLES}")
    known = raw.get("known_hosts", default_known)
    if not private and not isinstance(known, str):
        raise BadInput(f"{where} ({raw['name']}): no known_hosts file (host keys are checked)")
    unit = raw.get("unit")
    if unit is not None and not isinstance(unit, str):
        raise BadInput(f"{where} ({raw['name']}): unit must be a string")
    return InventoryHost(
        name=raw["name"],
        address=raw["address"],
        port=port,
        user=str(raw.get("user", "root")),
        key=base / Path(raw["key"]).expanduser(),
        role=role,
        private=private,
        dir=raw.get("dir"),
        known_hosts=base / Path(known).expanduser() if isinstance(known, str) else None,
        unit=unit,
    )


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dump(hosts: Sequence[InventoryHost], known_hosts: Path | None = None) -> str:
    """The TOML of an inventory (absolute paths)."""
    lines = [] if known_hosts is None else [f"known_hosts = {_toml_str(str(known_hosts))}", ""]
    for h in hosts:
        lines += [
            "[[host]]",
            f"name = {_toml_str(h.name)}",
            f"address = {_toml_str(h.address)}",
            f"port = {h.port}",
            f"user = {_toml_str(h.user)}",
            f"key = {_toml_str(str(h.key))}",
            f"role = {_toml_str(h.role)}",
        ]
        if h.private:
            lines.append("private = true")
        if h.dir is not None:
            lines.append(f"dir = {_toml_str(h.dir)}")
        if h.unit is not None:
            lines.append(f"unit = {_toml_str(h.unit)}")
        lines.append("")
    return "\n".join(lines)


def write(path: Path, hosts: Sequence[InventoryHost], known_hosts: Path | None = None) -> Inventory:
    path.write_text(dump(hosts, known_hosts))
    return load(path)


__all__ = ["ROLES", "Inventory", "InventoryHost", "dump", "load", "parse", "write"]
