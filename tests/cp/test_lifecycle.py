"""`nixfleet.cp.lifecycle` on a real `CpService` and an in-memory store: the prime
order and the snapshot rules the aiohttp runtime and the simulated CP share (seed 000
stair-step). The real-process side is test_cp_forge.py and test_cp_snapshot_durability.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleet_sim.fleetgen import HostDecl, ReleaseKit, ci_commit, fake_closure, fleet_doc
from harness.mutants import injected
from nixfleet.core.snapshot import SOURCE_BUILD_TIME, SOURCE_UPSTREAM
from nixfleet.core.trust import parse_trust
from nixfleet.cp.lifecycle import CHANNEL_REFS, SOURCE_CACHE, Lifecycle, UpstreamError
from nixfleet.cp.service import CpService, ServiceSettings
from nixfleet.cp.store import Store

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
KIT = ReleaseKit()
FORGE_DOWN = UpstreamError("GET fleet.resolved.json: connect failed")


def release(n: int) -> tuple[bytes, bytes]:
    hosts = {"h1": HostDecl(closure=fake_closure("h1", n))}
    return KIT.sign(fleet_doc(hosts, signed_at=NOW + timedelta(hours=n), ci_commit=ci_commit(n)))


BAKED, NEWEST = release(1), release(2)


class Cache:
    where = "memory"

    def __init__(self, pair: tuple[bytes, bytes] | None = None) -> None:
        self.pair = pair

    def load(self) -> tuple[bytes, bytes] | None:
        return self.pair

    def save(self, raw: bytes, sig: bytes) -> None:
        self.pair = (raw, sig)


def lifecycle(cache: Cache) -> Lifecycle:
    trust = parse_trust(KIT.trust())
    service = CpService(Store.open(":memory:"), lambda: trust, ServiceSettings(agent_cn_suffix="t"))
    return Lifecycle(service, cache=cache, build_time=lambda: BAKED, upstream_label="forge")


def served(lc: Lifecycle) -> tuple[str, str]:
    snap = lc.service.snapshot
    assert snap is not None
    return snap.ci_commit or "", snap.source


@pytest.mark.parametrize(
    ("forge", "cached", "expected"),
    [
        (NEWEST, None, (ci_commit(2), SOURCE_UPSTREAM)),
        (NEWEST, BAKED, (ci_commit(2), SOURCE_UPSTREAM)),
        (FORGE_DOWN, NEWEST, (ci_commit(2), SOURCE_CACHE)),
        (FORGE_DOWN, None, (ci_commit(1), SOURCE_BUILD_TIME)),
    ],
)
def test_prime_forge_then_cache_then_build_time(
    forge: tuple[bytes, bytes] | UpstreamError,
    cached: tuple[bytes, bytes] | None,
    expected: tuple[str, str],
) -> None:
    cache = Cache(cached)
    lc = lifecycle(cache)
    lc.prime({CHANNEL_REFS: forge}, now=NOW + timedelta(days=1))
    assert served(lc) == expected
    # Every tick re-offers the baked artifact: it never replaces a newer one.
    lc.tick(now=NOW + timedelta(days=1))
    assert served(lc) == expected
    if forge is NEWEST:  # a verified upstream artifact is recorded before it is served
        assert cache.pair == NEWEST


def test_the_seed_bug_primes_from_the_baked_artifact_until_the_first_poll() -> None:
    with injected("prime-from-build-time"):
        lc = lifecycle(Cache())
        lc.prime({CHANNEL_REFS: NEWEST}, now=NOW + timedelta(days=1))
        assert served(lc) == (ci_commit(1), SOURCE_BUILD_TIME)
        lc.poll({CHANNEL_REFS: NEWEST}, now=NOW + timedelta(days=1))
        assert served(lc) == (ci_commit(2), SOURCE_UPSTREAM)


def test_a_baked_artifact_signed_in_the_same_second_never_takes_turns() -> None:
    """Two releases signed at the same instant (CI publishing twice in one second): the
    upstream one is served and the tick's re-offer of the baked one does not swap it
    back, poll after poll."""
    hosts = {"h1": HostDecl(closure=fake_closure("h1", 9))}
    twin = KIT.sign(fleet_doc(hosts, signed_at=NOW + timedelta(hours=1), ci_commit=ci_commit(9)))
    lc = lifecycle(Cache())
    lc.prime({CHANNEL_REFS: twin}, now=NOW + timedelta(days=1))
    for _ in range(3):
        lc.tick(now=NOW + timedelta(days=1))
        assert served(lc) == (ci_commit(9), SOURCE_UPSTREAM)
        lc.poll({CHANNEL_REFS: twin}, now=NOW + timedelta(days=1))
        assert served(lc) == (ci_commit(9), SOURCE_UPSTREAM)
