"""Closure fetch from a real signed binary cache (file:// and HTTP), with real nix.

The closures are input-addressed (built by `nix-build`, a system plus a package),
signed on upload with `nix copy --to '…?secret-key=…'`, then deleted from the local
store so that `nix-store --realise` must substitute them and check the signature
against `trusted-public-keys`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from agent_testlib import (
    BinaryCache,
    FakeSystems,
    basename,
    closure_paths,
    delete_from_store,
    nix_env,
)

from nixfleet.agent.activation import NixActivator
from nixfleet.core.agent_events import FetchDone, FetchFailed, SignatureMismatch
from nixfleet.core.closure import ClosureHash

pytestmark = pytest.mark.nix


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    e = nix_env(tmp_path)
    monkeypatch.setenv("NIX_CONFIG", e["NIX_CONFIG"])
    monkeypatch.setenv("XDG_CACHE_HOME", e["XDG_CACHE_HOME"])
    return e


@pytest.fixture
def systems(tmp_path: Path, env: dict[str, str]) -> FakeSystems:
    return FakeSystems(dir=tmp_path / "systems", link=tmp_path / "current-system", env=env)


def fetcher(tmp_path: Path, substituter: str, *keys: str) -> NixActivator:
    return NixActivator(
        profile=tmp_path / "profiles" / "system",
        current_link=tmp_path / "current-system",
        booted_link=tmp_path / "booted-system",
        substituters=[substituter],
        trusted_public_keys=keys,
        switch_lock=tmp_path / "switch.lock",
    )


def pushed(cache: BinaryCache, systems: FakeSystems, gen: str) -> tuple[str, ClosureHash]:
    path = systems.build(gen)
    assert len(closure_paths(path, systems.env)) == 2
    cache.push(path)
    delete_from_store(path, systems.env)
    return path, ClosureHash(basename(path))


async def test_file_cache_signed_by_trusted_key(
    tmp_path: Path, env: dict[str, str], systems: FakeSystems
) -> None:
    cache = BinaryCache(tmp_path / "cache", env)
    path, closure = pushed(cache, systems, "1")
    act = fetcher(tmp_path, cache.file_url, cache.public_key)
    assert await act.fetch(closure) == FetchDone()
    assert os.path.isfile(f"{path}/bin/switch-to-configuration")
    assert len(closure_paths(path, env)) == 2
    # Already valid: realised again without the cache.
    assert await fetcher(tmp_path, "file:///nonexistent", cache.public_key).fetch(closure) == (
        FetchDone()
    )


async def test_http_cache_and_unknown_key(
    tmp_path: Path, env: dict[str, str], systems: FakeSystems
) -> None:
    cache = BinaryCache(tmp_path / "cache", env)
    rogue = BinaryCache(tmp_path / "rogue", env, key_name="rogue-cache-1")
    path, closure = pushed(rogue, systems, "1")
    rogue.serve()
    try:
        # Signed by a key the agent does not trust: refused, as a signature problem.
        refused = await fetcher(tmp_path, rogue.http_url, cache.public_key).fetch(closure)
        assert isinstance(refused, FetchFailed)
        assert refused.signature_mismatch
        assert refused.stderr_tail is not None
        assert "is not signed by any of the keys" in refused.stderr_tail
        assert not os.path.exists(path)
        # The activator maps the same refusal to SignatureMismatch.
        act = fetcher(tmp_path, rogue.http_url, cache.public_key)
        outcome = await act.activate(closure)
        assert isinstance(outcome, SignatureMismatch)
        # Trusting the right key, the same HTTP cache works.
        trusted = fetcher(tmp_path, rogue.http_url, rogue.public_key)
        assert await trusted.fetch(closure) == FetchDone()
    finally:
        rogue.stop()


async def test_cache_outage_is_a_fetch_failure(
    tmp_path: Path, env: dict[str, str], systems: FakeSystems
) -> None:
    cache = BinaryCache(tmp_path / "cache", env)
    path, closure = pushed(cache, systems, "1")
    url = cache.serve()
    cache.stop()  # the cache is down
    failed = await fetcher(tmp_path, url, cache.public_key).fetch(closure)
    assert isinstance(failed, FetchFailed)
    assert not failed.signature_mismatch
    assert "nix-store --realise failed" in failed.reason
    # Not pushed at all: also a plain fetch failure.
    missing = ClosureHash("0" * 32 + "-nixos-system-host-never")
    failed = await fetcher(tmp_path, cache.file_url, cache.public_key).fetch(missing)
    assert isinstance(failed, FetchFailed) and not failed.signature_mismatch
    assert not os.path.exists(path)
