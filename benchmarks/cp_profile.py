"""Where a control-plane checkin spends its time, in process (no TLS, no HTTP).

Drives a real `CpService` over a real SQLite store (WAL, synchronous=FULL, on disk)
with a signed fleet of N hosts, the way the aiohttp handler does: parse the JSON
body, `CpService.checkin`, dump the reply. The DB is primed like `cp_load.py
--start converged` (every host but a few already converged), then it times:

- steady checkins (converged hosts, read-only),
- first-contact checkins (the unprimed hosts: a converged-at-dispatch write each),
- dispatch checkins (primed hosts reporting an older closure: a target is issued),

breaks a steady checkin into its parts, and prints the top of a cProfile of each.

    python benchmarks/cp_profile.py --hosts 1000 10000 --checkins 300

Companion of `benchmarks/cp_load.py`, which measures the real process end to end.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cp_load import prime_converged  # noqa: E402

from fleet_sim.fleetgen import HostDecl, ReleaseKit, ci_commit, fake_closure, fleet_doc  # noqa: E402
from nixfleet.core import wire  # noqa: E402
from nixfleet.core.gates import GateView  # noqa: E402
from nixfleet.core.trust import parse_trust  # noqa: E402
from nixfleet.cp.service import CpService, ServiceSettings  # noqa: E402
from nixfleet.cp.store import Store  # noqa: E402

CN_SUFFIX = "fleet.test"


def host_name(i: int) -> str:
    return f"h{i:05d}"


def checkin_body(host: str, closure: str) -> bytes:
    req = wire.CheckinRequest(
        hostname=host,
        agent_version="bench",
        current_generation=wire.GenerationRef(closure_hash=wire.ClosureHash(closure),
                                              boot_id="00000000-0000-4000-8000-000000000000"),
        last_fetch_outcome=wire.FetchOutcome(result=wire.FETCH_NONE),
        uptime_secs=3600,
    )
    return json.dumps(wire.dump_checkin_request(req)).encode()


def build(
    dir: Path, n: int, unprimed: int
) -> tuple[CpService, dict[str, bytes], bytes, bytes]:
    kit = ReleaseKit()
    hosts = {host_name(i): HostDecl(closure=fake_closure(host_name(i), 2)) for i in range(n)}
    raw, sig = kit.sign(fleet_doc(hosts, signed_at=datetime.now(UTC), ci_commit=ci_commit(1)))
    trust = parse_trust(kit.trust())
    # Prime every host, then delete the last `unprimed` hosts' rows: they have never
    # checked in (the rollout id hashes the fleet, so it must be this fleet).
    t = time.perf_counter()
    prime_converged(dir / "state.db", raw, sig, kit.trust())
    with sqlite3.connect(dir / "state.db") as conn:
        gone = [host_name(i) for i in range(n - unprimed, n)]
        conn.executemany("DELETE FROM host_rollout_state WHERE hostname = ?", [(h,) for h in gone])
        conn.executemany("DELETE FROM pending_confirms WHERE hostname = ?", [(h,) for h in gone])
    print(f"  primed {n - unprimed} converged hosts in {time.perf_counter() - t:.1f} s")
    store = Store.open(dir / "state.db")
    service = CpService(store, lambda: trust, ServiceSettings(agent_cn_suffix=CN_SUFFIX))
    t = time.perf_counter()
    service.offer_fleet(raw, sig, now=datetime.now(UTC), source="upstream")
    print(f"  offer_fleet (verify + parse {len(raw) / 1e6:.1f} MB artifact): "
          f"{(time.perf_counter() - t) * 1e3:.0f} ms")
    bodies = {h: checkin_body(h, d.closure or "") for h, d in hosts.items()}
    return service, bodies, raw, sig


def profile(label: str, fn: Callable[[], object], top: int) -> None:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    print(f"  cProfile of {label} (cumulative, top {top}):")
    lines = out.getvalue().splitlines()
    start = next((i for i, ln in enumerate(lines) if "ncalls" in ln), 0)
    for ln in lines[start:]:
        if ln.strip():
            print("    " + ln.replace(str(ROOT) + "/", ""))


def one_checkin(service: CpService, body: bytes) -> dict[str, Any]:
    """What the `/v1/agent/checkin` handler does, minus TLS and aiohttp."""
    req = wire.parse_checkin_request(json.loads(body), source="checkin body")
    reply = service.checkin(req, now=datetime.now(UTC))
    return wire.dump_checkin_response(reply)


def timed(fn: Callable[[], object], reps: int, budget: float = 3.0) -> tuple[float, int]:
    """Median milliseconds of `fn` over up to `reps` calls (at least 3, then stopping
    once `budget` seconds are spent), and the number of calls."""
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < reps and (len(samples) < 3 or time.perf_counter() - start < budget):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples), len(samples)


def run(n: int, checkins: int, unprimed: int, top: int) -> None:
    print(f"\n=== {n} hosts ===")
    unprimed = min(unprimed, n // 2)
    with tempfile.TemporaryDirectory(prefix="cp-profile-") as tmp:
        service, bodies, raw, sig = build(Path(tmp), n, unprimed)
        names = list(bodies)
        primed = names[: n - unprimed]
        fresh = names[n - unprimed :]
        sample = [primed[(i * 7919) % len(primed)] for i in range(checkins)]

        def steady() -> None:
            for h in sample:
                one_checkin(service, bodies[h])

        t = time.perf_counter()
        steady()
        dt = time.perf_counter() - t
        print(f"  steady (converged, read-only): {dt / checkins * 1e3:.3f} ms/checkin = "
              f"{checkins / dt:.0f} checkins/s")

        store = service.store
        assert store is not None
        now = datetime.now(UTC)
        host = primed[len(primed) // 2]  # mid-wave: wave_index scans the wave's hosts
        req = wire.parse_checkin_request(json.loads(bodies[host]))
        snap = service.snapshot
        assert snap is not None
        reps = max(5, min(50, checkins // 5))
        parts = {
            "json.loads + parse_checkin_request": lambda: wire.parse_checkin_request(
                json.loads(bodies[host])
            ),
            "CpService.observed(now) [whole]": lambda: service.observed(now),
            "  store.participation_rows()": store.participation_rows,
            "  store.latest_dispatch_rows()": store.latest_dispatch_rows,
            "  store.rollout_rows() + quarantined()": lambda: (
                store.rollout_rows(),
                store.quarantined(),
            ),
            "GateView.of(observed)": (lambda o: lambda: GateView.of(o))(service.observed(now)),
            "CpService._gate(...) [as cached now]": lambda: service._gate(snap, host, now),
            "CpService._plan(...) [2 point reads]": lambda: service._plan(snap, host),
            "store.latest_dispatch(host)": lambda: store.latest_dispatch(host),
            "snap.fleet.wave_index(host)": lambda: snap.fleet.wave_index(host),
            "CpService.checkin(req) [whole, steady]": lambda: service.checkin(req, now=now),
            "wire.dump_checkin_response + json.dumps": lambda: json.dumps(
                wire.dump_checkin_response(wire.CheckinResponse())
            ),
        }
        print(f"  one steady checkin, by part (median of up to {reps} calls):")
        for label, fn in parts.items():
            ms, calls = timed(fn, reps)
            print(f"    {label:<44} {ms:8.3f} ms  (x{calls})")
        print("  work that blocks the CP's event loop between checkins:")
        for label, fn in {
            "CpService.tick(now) [reconcile, every 30 s]": lambda: service.tick(now=now),
            "CpService.offer_fleet [poll, every 60 s]": lambda: service.offer_fleet(
                raw, sig, now=now, source="upstream"
            ),
            f"gc.collect() [{len(gc.get_objects())} tracked objects]": gc.collect,
        }.items():
            ms, calls = timed(fn, 5)
            print(f"    {label:<44} {ms:8.3f} ms  (x{calls})")
        profile(f"{checkins} steady checkins", steady, top)
        profile("one reconcile tick", lambda: service.tick(now=now), top)
        profile(
            "one poll of the unchanged fleet artifact",
            lambda: service.offer_fleet(raw, sig, now=now, source="upstream"),
            top,
        )

        def first_contact() -> None:
            for h in fresh:
                one_checkin(service, bodies[h])

        t = time.perf_counter()
        first_contact()
        dt = time.perf_counter() - t
        print(f"  first contact (converged-at-dispatch write + gate), {len(fresh)} hosts: "
              f"{dt / max(1, len(fresh)) * 1e3:.3f} ms/checkin")

        old = {h: checkin_body(h, fake_closure(h, 1)) for h in sample[:unprimed]}

        def dispatch() -> None:
            for body in old.values():
                one_checkin(service, body)

        t = time.perf_counter()
        dispatch()
        dt = time.perf_counter() - t
        print(f"  dispatch (old closure → target issued), {len(old)} hosts: "
              f"{dt / max(1, len(old)) * 1e3:.3f} ms/checkin")
        t = time.perf_counter()
        dispatch()
        dt = time.perf_counter() - t
        print(f"  in flight (same hosts again → no target): "
              f"{dt / max(1, len(old)) * 1e3:.3f} ms/checkin")

        profile(f"{len(old)} in-flight checkins", dispatch, top)
        store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--checkins", type=int, default=300, help="steady checkins per size")
    p.add_argument("--unprimed", type=int, default=30,
                   help="hosts left out of the primed DB (first-contact checkins)")
    p.add_argument("--top", type=int, default=30, help="cProfile rows to print")
    a = p.parse_args(argv)
    for n in a.hosts:
        run(n, a.checkins, a.unprimed, a.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
