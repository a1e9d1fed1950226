"""The Nix side of the local fleet, with real nix: fake system closures, a signed
HTTP binary cache, and hosts with private stores in their own mount namespaces."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.binarycache import BinaryCache, OutageMode
from harness.nixfixture import (
    FAIL_EXIT_CODE,
    NixBuilder,
    StorePath,
    build_system_closure,
    has_signature_phrase,
)
from harness.nshost import (
    HostRoot,
    build_and_push,
    build_host_system,
    namespaces_available,
    run_in_host,
)
from nixfleet.core.closure import NIX_BASE32

pytestmark = [
    pytest.mark.nix,
    pytest.mark.skipif(
        shutil.which("nix-build") is None or not namespaces_available(),
        reason="needs nix and root mount namespaces (unshare --mount)",
    ),
]

BASENAME = re.compile(rf"^[{NIX_BASE32}]{{32}}-nixos-system-(.+)-(\d+)$")
REAL_NIX = Path("/nix")


@dataclass
class World:
    tmp: Path
    marker: str
    builder: NixBuilder
    cache: BinaryCache

    def host(self, name: str) -> HostRoot:
        return HostRoot.create(self.tmp / "hosts" / name, f"{self.marker}-{name}", self.cache)

    def system(
        self,
        host: HostRoot,
        gen: int,
        *,
        fail: bool = False,
        variant: str = "",
        extra_paths: int = 0,
        extra_bytes: int = 0,
        switch_delay_secs: float = 0,
    ) -> StorePath:
        return build_host_system(
            self.builder,
            host,
            gen,
            fail=fail,
            variant=variant,
            extra_paths=extra_paths,
            extra_bytes=extra_bytes,
            switch_delay_secs=switch_delay_secs,
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is gone once reaped
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def _outside_traces(marker: str) -> list[str]:
    """Anything named after this module's hosts in the machine's own /nix or $HOME."""
    found = [p.name for p in (REAL_NIX / "store").iterdir() if marker in p.name]
    db = REAL_NIX / "var/nix/db"
    for f in ("db.sqlite", "db.sqlite-wal"):
        if (db / f).exists() and marker.encode() in (db / f).read_bytes():
            found.append(str(db / f))
    for d in (Path.home() / ".cache" / "nix", Path.home() / ".nix-defexpr"):
        if d.exists() and marker in "".join(str(p) for p in d.rglob("*")):
            found.append(str(d))
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("nixfleet-nix")
    marker = "nfx" + secrets.token_hex(3)
    builder = NixBuilder.create(tmp / "builder")
    cache = BinaryCache.create(tmp / "cache", builder).start()
    pid = cache.pid
    try:
        yield World(tmp, marker, builder, cache)
    finally:
        cache.stop()
    assert pid is not None and not _alive(pid)
    assert _outside_traces(marker) == []


def test_system_closure_shape(world: World) -> None:
    host = world.host("shape")
    t0 = time.monotonic()
    path = build_system_closure(
        world.builder, host.hostname, 1, current_system_link=host.current_system
    )
    elapsed = time.monotonic() - t0
    m = BASENAME.match(path.basename)
    assert m is not None and m.groups() == (host.hostname, "1")
    assert path.path == f"/nix/store/{path.basename}"
    assert elapsed < 3.0

    closure = world.builder.closure(path)
    assert len(closure) >= 2
    pkg = [p for p in closure if p.name == f"fleet-pkg-{host.hostname}-1"]
    assert len(pkg) == 1
    assert pkg[0].path in world.builder.references(path)  # a real Refs row

    s2c = world.builder.on_disk(path) / "bin" / "switch-to-configuration"
    assert os.access(s2c, os.X_OK)
    assert os.readlink(world.builder.on_disk(path) / "sw") == pkg[0].path

    # deterministic; `variant` changes the hash, not the name; extras grow the closure
    assert (
        build_system_closure(
            world.builder, host.hostname, 1, current_system_link=host.current_system
        )
        == path
    )
    other = world.system(host, 1, variant="b")
    assert other != path and other.name == path.name
    big = world.system(host, 1, extra_paths=3, extra_bytes=4096)
    assert len(world.builder.closure(big)) == 5


def test_two_hosts_realise_set_switch_isolated(world: World) -> None:
    h1, h2 = world.host("h1"), world.host("h2")
    paths = {}
    for g in (1, 2):
        release = build_and_push(world.builder, world.cache, [h1, h2], g)
        paths.update({(name, g): p for name, p in release.items()})
    for p in paths.values():
        assert world.cache.signers(p) == ["fleet-cache-1"]

    h1.provision(paths[h1.hostname, 1])
    h2.provision(paths[h2.hostname, 1])
    assert h1.current_system_basename() == paths[h1.hostname, 1].basename
    assert h2.current_system_basename() == paths[h2.hostname, 1].basename
    assert h1.booted_system_basename() == paths[h1.hostname, 1].basename

    # realised over HTTP, signature checked, into h1's private store only
    g2 = paths[h1.hostname, 2]
    fetched_before = [r for r in world.cache.requests() if g2.hash in r.path]
    proc = h1.realise(g2)
    assert proc.returncode == 0, proc.stderr
    assert [r for r in world.cache.requests() if g2.hash in r.path] != fetched_before
    assert h1.on_disk(g2).is_dir() and h1.is_valid(g2)
    assert not h2.on_disk(g2).exists() and not h2.is_valid(g2)
    assert not (REAL_NIX / "store" / g2.basename).exists()

    assert h1.set_profile(g2).returncode == 0
    assert h1.switch().returncode == 0  # the profile's bin/switch-to-configuration
    assert h1.current_system_basename() == g2.basename
    assert h2.current_system_basename() == paths[h2.hostname, 1].basename
    assert [(g.number, g.basename) for g in h1.generations()] == [
        (1, paths[h1.hostname, 1].basename),
        (2, g2.basename),
    ]
    assert [g.number for g in h2.generations()] == [1]
    assert h1.booted_system_basename() == paths[h1.hostname, 1].basename
    assert [(a.event, a.basename) for a in h1.activations()][-2:] == [
        ("begin", g2.basename),
        ("ok", g2.basename),
    ]

    # setting the current path again adds no generation
    assert h1.set_profile(g2).returncode == 0
    assert h1.current_generation() == 2
    proc = h1.rollback()
    assert proc.returncode == 0, proc.stderr
    assert h1.current_generation() == 1
    assert h1.profile_target() == paths[h1.hostname, 1].basename
    assert h1.current_system_basename() == paths[h1.hostname, 1].basename
    # Nix 2.8 compares with the *newest* generation: re-setting g2 after the rollback
    # reuses generation 2; any other path then makes a new, higher one
    assert h1.set_profile(g2).returncode == 0 and h1.switch(g2).returncode == 0
    assert [g.number for g in h1.generations()] == [1, 2]
    assert h1.current_generation() == 2
    assert h1.rollback().returncode == 0
    g3 = world.system(h1, 3)
    world.cache.push(g3)
    h1.activate(g3)
    assert [g.number for g in h1.generations()] == [1, 2, 3]
    assert h1.current_system_basename() == g3.basename


def test_run_in_host_sees_only_its_store(world: World) -> None:
    h = world.host("ns")
    g1 = world.system(h, 1)
    world.cache.push(g1)
    h.provision(g1)

    proc = run_in_host(["sleep", "30"], h, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{proc.pid}/comm").read_text().strip() != "sleep":
            assert time.monotonic() < deadline, "sleep never exec'd in the namespace"
            time.sleep(0.01)
        # the PID is the command itself; its /nix is the host's
        inside = set(os.listdir(f"/proc/{proc.pid}/root/nix/store"))
        assert g1.basename in inside
        assert inside == set(os.listdir(h.store_dir))
        assert g1.basename not in os.listdir(REAL_NIX / "store")
    finally:
        proc.terminate()
        proc.wait(5)
    assert proc.returncode == -15 and not _alive(proc.pid)

    out = h.run(["sh", "-c", "readlink /nix/var/nix/profiles/system-1-link"], check=True)
    assert out.stdout.strip() == g1.path


def test_failing_switch_exits_nonzero_and_rollback_restores(world: World) -> None:
    h = world.host("fail")
    good, bad = world.system(h, 1), world.system(h, 2, fail=True)
    world.cache.push(good)
    world.cache.push(bad)
    h.provision(good)

    assert h.realise(bad).returncode == 0
    assert h.set_profile(bad).returncode == 0
    proc = h.switch(bad)
    assert proc.returncode == FAIL_EXIT_CODE
    assert "failed" in proc.stderr
    assert h.current_system_basename() == good.basename
    assert h.activations()[-1].event == "failed"

    proc = h.rollback()
    assert proc.returncode == 0, proc.stderr
    assert h.current_generation() == 1
    assert h.current_system_basename() == good.basename


def test_switch_holds_lock_while_delayed(world: World) -> None:
    h = world.host("lock")
    g1, slow = world.system(h, 1), world.system(h, 2, switch_delay_secs=0.5)
    for p in (g1, slow):
        world.cache.push(p)
    h.provision(g1)
    assert h.realise(slow).returncode == 0 and h.set_profile(slow).returncode == 0

    first = run_in_host(
        [f"{slow.path}/bin/switch-to-configuration", "switch"],
        h,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while not any(a.event == "begin" and a.basename == slow.basename for a in h.activations()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # mid-activation: the lock is held, a second switch is refused, link unchanged
        held = subprocess.run(["flock", "-n", str(h.switch_lock), "true"], check=False)
        assert held.returncode != 0
        second = h.switch(g1)
        assert second.returncode == 1 and "Could not acquire lock" in second.stderr
        assert h.current_system_basename() == g1.basename
        assert first.wait(5) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert h.current_system_basename() == slow.basename
    assert subprocess.run(["flock", "-n", str(h.switch_lock), "true"]).returncode == 0


def test_unknown_key_closure_is_refused(world: World) -> None:
    h = world.host("rogue")
    good = world.system(h, 1)
    world.cache.push(good)
    h.provision(good)

    rogue = build_and_push(world.builder, world.cache, [h], 2, unknown_key={h.hostname})[h.hostname]
    assert world.cache.signers(rogue) == ["unknown-cache-1"]
    proc = h.realise(rogue)
    assert proc.returncode != 0
    assert has_signature_phrase(proc.stderr), proc.stderr
    assert not h.is_valid(rogue)

    unsigned = world.system(h, 3, variant="unsigned")
    world.cache.push_unsigned(unsigned)
    assert world.cache.signers(unsigned) == []
    proc = h.realise(unsigned)
    assert proc.returncode != 0 and has_signature_phrase(proc.stderr), proc.stderr

    # `nix copy --from` (the other way to fetch) refuses with "lacks a valid signature"
    proc = h.run(["nix", "copy", "--from", world.cache.url, rogue.path])
    assert proc.returncode != 0 and "lacks a valid signature" in proc.stderr
    assert h.current_system_basename() == good.basename


def test_cache_outage_fails_cleanly_and_heals(world: World) -> None:
    cache = BinaryCache.create(world.tmp / "outage-cache", world.builder).start()
    try:
        h = HostRoot.create(world.tmp / "hosts" / "outage", f"{world.marker}-out", cache)
        paths = [world.system(h, g) for g in (1, 2, 3)]
        for p in paths:
            cache.push(p)
        h.provision(paths[0])

        cases = [
            (OutageMode.UNAVAILABLE, "503"),
            (OutageMode.DROP, "unable to download"),
            (OutageMode.DOWN, "Couldn't connect to server"),
        ]
        for mode, phrase in cases:
            pid = cache.pid
            cache.outage(mode)
            if mode is OutageMode.DOWN:
                assert pid is not None and not _alive(pid) and cache.pid is None
            t0 = time.monotonic()
            proc = h.realise(paths[1])
            assert proc.returncode != 0, mode
            assert phrase in proc.stderr, (mode, proc.stderr)
            assert not has_signature_phrase(proc.stderr)
            assert time.monotonic() - t0 < 5
            assert not h.is_valid(paths[1])
            cache.heal()
        assert cache.pid is not None and _alive(cache.pid)
        assert any(r.status == 503 for r in cache.requests())

        # healed: the same path now realises (no negative narinfo caching)
        h.activate(paths[1])
        assert h.current_system_basename() == paths[1].basename
    finally:
        pid = cache.pid
        cache.stop()
    assert pid is not None and not _alive(pid)


def test_nothing_written_outside_tmp(world: World) -> None:
    # Build here: under xdist this test may be the only one of the module on its worker.
    host = world.host("outside")
    build_system_closure(world.builder, host.hostname, 1, current_system_link=host.current_system)
    assert _outside_traces(world.marker) == []
    # positive control: the marker is findable where the closures really went
    assert any(world.marker in p.name for p in (world.builder.nix_dir / "store").iterdir())
    assert world.marker.encode() in world.builder.db_path.read_bytes() + (
        world.builder.db_path.with_name("db.sqlite-wal").read_bytes()
        if world.builder.db_path.with_name("db.sqlite-wal").exists()
        else b""
    )
