"""Metrics of a finished run, read from its history: nothing here depends on the wall
clock, so the same (scenario, seed) gives the same numbers, byte for byte.

`compute(world)` returns a JSON-able dict (the report's `metrics.json`, a sweep task's
result); `series(world)` the time series the report plots.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .faults import Fault
    from .world import World

BIN_SECS = 60.0
"""Width of a rate bin: rates are per simulated minute."""
RATE_KINDS = ("dispatch", "confirm", "rollback")
COUNT_KINDS = (
    "checkin", "checkin-failed", "dispatch", "activate", "activated", "activation-failed",
    "confirm", "confirm-failed", "rollback", "rollback-failed", "report", "fetch",
    "fetch-failed", "sweep", "cp-start", "cp-crash", "cp-wipe", "agent-crash",
)  # fmt: skip
FAULT_STATE_FIELDS = frozenset({"when", "check_every", "picked", "previous"})
"""Fault fields that are run-time state or Python-only, left out of a fault's description."""


def _r(x: float) -> float:
    """Round for output: stable text, no float noise."""
    return round(x, 6)


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def spread(values: Iterable[float]) -> dict[str, float | int | None]:
    """n, p50, p90, p99 and max of some values."""
    ordered = sorted(values)
    out: dict[str, float | int | None] = {"n": len(ordered)}
    for name, p in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0)):
        v = percentile(ordered, p)
        out[name] = None if v is None else _r(v)
    out["max"] = _r(ordered[-1]) if ordered else None
    return out


def describe_fault(fault: Fault) -> dict[str, Any]:
    """A fault as plain data: its kind and the fields it was built with."""
    out: dict[str, Any] = {"kind": type(fault).__name__}
    for f in dataclasses.fields(fault):
        if f.name in FAULT_STATE_FIELDS:
            continue
        value = getattr(fault, f.name)
        if isinstance(value, tuple | list):
            value = list(value)
        out[f.name] = value
    if fault.when is not None:
        out["when"] = "condition"
    return out


@dataclass(frozen=True, slots=True)
class Series:
    """What the report plots."""

    converged: list[list[tuple[float, int]]]
    """Per wave, step points (sim seconds, hosts of the wave on the declared closure)."""
    wave_sizes: list[int]
    rates: dict[str, list[int]]
    """Per op kind, counts per `bin_secs` bin from t=0."""
    bin_secs: float
    latencies: list[float]
    """Every successful checkin's round trip, sim seconds."""
    faults: list[tuple[float, float | None, str]] = field(default_factory=list)
    """(invoked at, healed at or None, fault name)."""
    released_at: float | None = None
    end: float = 0.0


def _on_target_transitions(world: World) -> tuple[dict[str, bool], dict[str, float], list[Any]]:
    """Replay the history: whether each host runs its declared closure, since when, and
    the (t, host, on) changes in order."""
    initially = world.generation == 0
    on = dict.fromkeys(world.hosts, initially)
    since = dict.fromkeys(world.hosts, 0.0)
    changes: list[tuple[float, str, bool]] = []
    for op in world.history.events:
        if op.host is None or op.host not in on:
            continue
        if op.kind == "activated":
            now_on = op.detail.get("closure") == world.target(op.host)
        elif op.kind == "rollback":
            now_on = op.detail.get("to") == world.target(op.host)
        else:
            continue
        if now_on != on[op.host]:
            on[op.host] = now_on
            changes.append((op.t, op.host, now_on))
        if now_on:
            since[op.host] = op.t
    # The replay and the hosts agree unless the model changed under us; trust the hosts.
    for name, host in world.hosts.items():
        on[name] = host.current == world.target(name)
    return on, since, changes


def _released_at(world: World) -> float | None:
    times = [
        op.t for op in world.history.of("release") if op.detail.get("release") == world.generation
    ]
    return times[-1] if times else None


def _rollout_state(world: World) -> dict[str, Any] | None:
    service, rid = world.cp.service, world.rollout_id
    if rid is None:
        return None
    out: dict[str, Any] = {"id": rid, "state": None, "wave": None}
    if service is not None and service.store is not None:
        ro = service.store.rollout(rid)
        if ro is not None:
            out["state"] = "Converged" if ro.terminal_at is not None else ro.state
            out["wave"] = ro.current_wave
    return out


def compute(world: World) -> dict[str, Any]:
    """Wall-independent metrics of a finished run, as JSON-able data."""
    config = world.config
    history = world.history
    end = float(world.env.now)
    kinds = Counter(op.kind for op in history.events)
    on, since, _changes = _on_target_transitions(world)
    released_at = _released_at(world)

    first_dispatch: dict[int, float] = {}
    rid = world.rollout_id
    for op in history.of("dispatch"):
        wave = op.detail.get("wave")
        if op.detail.get("rollout") == rid and isinstance(wave, int):
            first_dispatch.setdefault(wave, op.t)

    per_wave: list[dict[str, Any]] = []
    for index, wave in enumerate(world.waves):
        converged = [h for h in wave if on[h]]
        done_at = max(since[h] for h in wave) if wave and len(converged) == len(wave) else None
        started = first_dispatch.get(index)
        per_wave.append({
            "wave": index,
            "hosts": len(wave),
            "converged": len(converged),
            "started_at": None if started is None else _r(started),
            "converged_at": None if done_at is None else _r(done_at),
            "secs_after_release": (None if done_at is None or released_at is None
                                   else _r(done_at - released_at)),
            "secs_after_start": (None if done_at is None or started is None
                                 else _r(done_at - started)),
        })  # fmt: skip
    all_waves = per_wave and all(w["converged_at"] is not None for w in per_wave)
    convergence = (
        max(w["secs_after_release"] for w in per_wave)
        if all_waves and released_at is not None
        else None
    )

    minutes = end / 60.0 if end > 0 else 0.0
    rates = {k: (_r(kinds[k] / minutes) if minutes else 0.0) for k in RATE_KINDS}
    bins = _bins(world, BIN_SECS)
    latencies = [float(op.detail["latency"]) for op in history.of("checkin")]
    statuses = Counter(str(op.detail.get("status")) for op in history.of("confirm"))

    return {
        "config": {
            "hosts": config.hosts,
            "waves": len(world.waves),
            "wave_sizes": [len(w) for w in world.waves],
            "policy": config.policy,
            "seed": config.seed,
            "duration": config.duration,
            "poll_secs": config.poll_secs,
            "soak_minutes": config.soak_minutes,
            "confirm_window_secs": config.confirm_window_secs,
            "release_at": config.release_at,
            "loss": config.loss,
            "faults": [describe_fault(f) for f in world.faults],
        },
        "hosts": len(world.hosts),
        "waves": len(world.waves),
        "events": len(history.events),
        "sim_seconds": _r(end),
        "settled_at": None if world.settled_at is None else _r(world.settled_at),
        "released_at": None if released_at is None else _r(released_at),
        "rollout": _rollout_state(world),
        "converged_hosts": sum(1 for v in on.values() if v),
        "convergence_secs": convergence,
        "per_wave": per_wave,
        "counts": {k: kinds[k] for k in COUNT_KINDS},
        "rates_per_min": rates,
        "peak_per_min": {k: max(bins[k], default=0) for k in RATE_KINDS},
        "checkin_latency_secs": spread(latencies),
        "confirm_status": dict(sorted(statuses.items())),
        "trace_hash": history.trace_hash(),
    }


def _bins(world: World, width: float, kinds: Sequence[str] = RATE_KINDS) -> dict[str, list[int]]:
    count = math.floor(float(world.env.now) / width) + 1
    out = {k: [0] * count for k in kinds}
    for op in world.history.events:
        if op.kind in out:
            out[op.kind][min(count - 1, int(op.t // width))] += 1
    return out


def series(world: World) -> Series:
    """The time series behind the report's plots."""
    end = float(world.env.now)
    _on, _since, changes = _on_target_transitions(world)
    wave_of = {h: i for i, wave in enumerate(world.waves) for h in wave}
    initially = world.generation == 0
    counts = [len(w) if initially else 0 for w in world.waves]
    converged: list[list[tuple[float, int]]] = [[(0.0, c)] for c in counts]
    for t, host, now_on in changes:
        i = wave_of[host]
        counts[i] += 1 if now_on else -1
        converged[i].append((t, counts[i]))
    for points in converged:
        points.append((end, points[-1][1]))
    faults: list[tuple[float, float | None, str]] = []
    open_at: dict[str, float] = {}
    for op in world.history.of("fault"):
        name = str(op.detail.get("fault"))
        if op.detail.get("phase") == "invoke":
            open_at[name] = op.t
        elif name in open_at:
            faults.append((open_at.pop(name), op.t, name))
    faults.extend((t, None, name) for name, t in open_at.items())
    faults.sort(key=lambda f: (f[0], f[2]))
    return Series(
        converged=converged,
        wave_sizes=[len(w) for w in world.waves],
        rates=_bins(world, BIN_SECS),
        bin_secs=BIN_SECS,
        latencies=[float(op.detail["latency"]) for op in world.history.of("checkin")],
        faults=faults,
        released_at=_released_at(world),
        end=end,
    )


# --- presentation shared by the CLI table and the markdown/HTML summaries -------------


def fmt_secs(x: float | None) -> str:
    if x is None:
        return "—"
    if x < 60:
        return f"{x:.1f} s"
    m, s = divmod(x, 60.0)
    if m < 60:
        return f"{int(m)} min {s:04.1f} s"
    h, m = divmod(m, 60.0)
    return f"{int(h)} h {int(m):02d} min {s:04.1f} s"


def fmt_ms(x: float | int | None) -> str:
    return "—" if x is None else f"{float(x) * 1000:.1f} ms"


def flag_value(v: Any) -> str:
    """A fault field's value as `--fault` takes it: lists joined by +, 400.0 as 400."""
    if isinstance(v, list | tuple):
        return "+".join(flag_value(x) for x in v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def fault_label(desc: Mapping[str, Any]) -> str:
    """A described fault as its `--fault KIND:k=v,…` flag (a name equal to the kind and
    unset fields left out)."""
    fields = ",".join(
        f"{k}={flag_value(v)}"
        for k, v in desc.items()
        if k not in ("kind", "when") and v is not None and not (k == "name" and v == desc["kind"])
    )
    when = " (on condition)" if desc.get("when") else ""
    return f"{desc['kind']}:{fields}{when}" if fields else f"{desc['kind']}{when}"


def summary_rows(m: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The run's summary table as (metric, value) text rows."""
    cfg = m["config"]
    counts, rates, lat = m["counts"], m["rates_per_min"], m["checkin_latency_secs"]
    rollout = m.get("rollout") or {}
    rows = [
        ("hosts", str(m["hosts"])),
        ("waves", f"{m['waves']} ({' / '.join(str(n) for n in cfg['wave_sizes'])})"),
        ("policy", str(cfg["policy"])),
        ("seed", str(cfg["seed"])),
        ("poll", fmt_secs(cfg["poll_secs"])),
        ("faults", "; ".join(fault_label(f) for f in cfg["faults"]) or "none"),
        ("simulated time", fmt_secs(m["sim_seconds"])),
        ("settled at", fmt_secs(m["settled_at"])),
        ("events", str(m["events"])),
        (
            "rollout",
            f"{rollout.get('state') or '—'} at wave {rollout.get('wave')}" if rollout else "—",
        ),
        ("converged hosts", f"{m['converged_hosts']} / {m['hosts']}"),
        ("convergence after release", fmt_secs(m["convergence_secs"])),
    ]
    for kind, label in zip(RATE_KINDS, ("dispatches", "confirms", "rollbacks"), strict=True):
        rows.append(
            (label, f"{counts[kind]} ({rates[kind]:.2f}/min, peak {m['peak_per_min'][kind]}/min)")
        )
    rows += [
        ("activation failures", str(counts["activation-failed"])),
        ("checkins", f"{counts['checkin']} ok, {counts['checkin-failed']} failed"),
        (
            "checkin latency p50/p90/p99/max",
            " / ".join(fmt_ms(lat[k]) for k in ("p50", "p90", "p99", "max")),
        ),
        (
            "confirm statuses",
            ", ".join(f"{k}×{v}" for k, v in m["confirm_status"].items()) or "none",
        ),
    ]
    return rows


def wave_rows(m: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Per-wave convergence as text rows: wave, hosts, converged, started, converged at,
    since release."""
    return [
        (
            str(w["wave"]),
            str(w["hosts"]),
            str(w["converged"]),
            fmt_secs(w["started_at"]),
            fmt_secs(w["converged_at"]),
            fmt_secs(w["secs_after_release"]),
        )
        for w in m["per_wave"]
    ]


WAVE_HEADERS = ("wave", "hosts", "converged", "first dispatch", "converged at", "after release")
