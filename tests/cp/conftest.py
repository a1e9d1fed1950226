"""Fixtures for the CP process tests: a `CpEnv` per test and the operators' tools.

The tests start `nixfleet-control-plane serve` as a real process on 127.0.0.1 and
talk to it with aiohttp clients and with `curl`, `jq` and `sqlite3` as the seed
runbooks do. Nothing here sleeps blindly: waits poll with a deadline.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from fleet_sim.fleetgen import HostDecl
from harness.cpenv import CpEnv, MakeEnv

TOOLS = ("curl", "jq", "sqlite3")


@pytest.fixture(scope="session")
def operator_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"the CP process tests need {', '.join(missing)} on PATH")


@pytest.fixture
def make_env(tmp_path: Path, operator_tools: None) -> Iterator[MakeEnv]:
    """`make_env(hosts)` → a CpEnv (fleet CA, forge, trust); all closed at teardown."""
    envs: list[CpEnv] = []

    def make(hosts: Mapping[str, HostDecl], *, with_forge: bool = True) -> CpEnv:
        env = CpEnv.create(tmp_path / f"env{len(envs)}", hosts, with_forge=with_forge)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()
