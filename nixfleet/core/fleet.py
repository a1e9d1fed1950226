"""`fleet.resolved.json`: the signed declaration of hosts, channels, policies and waves.

Records are frozen; `parse_fleet` validates and `dump_fleet` emits the same JSON shape
back. Optional keys that were absent in the source stay absent on output (tracked in
each record's `absent`), so parse → dump → JCS reproduces the signed bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .jsonfields import Reader

ROLLBACK_AND_HALT = "rollback-and-halt"
HALT = "halt"
HEALTH_FAILURE_POLICIES = (HALT, ROLLBACK_AND_HALT)
COMPLIANCE_MODES = ("disabled", "permissive", "enforce")

_NO_ABSENT: frozenset[str] = frozenset()


def _absent_field() -> Any:
    return field(default=_NO_ABSENT, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Selector:
    """Matches a host if `all`, listed in `hosts`, on `channel`, has all `tags`
    (non-empty) or any of `tags_any` (non-empty)."""

    tags: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    channel: str | None = None
    all: bool = False

    def matches(self, hostname: str, host: Host) -> bool:
        if self.all or hostname in self.hosts:
            return True
        if self.channel is not None and host.channel == self.channel:
            return True
        if self.tags and all(t in host.tags for t in self.tags):
            return True
        return bool(self.tags_any) and any(t in host.tags for t in self.tags_any)

    def summary(self) -> str:
        if self.all:
            return "all"
        if self.channel is not None:
            return f"channel:{self.channel}"
        if self.tags:
            return "tags:" + ",".join(sorted(self.tags))
        if self.tags_any:
            return "tags_any:" + ",".join(sorted(self.tags_any))
        if self.hosts:
            return "hosts:" + ",".join(sorted(self.hosts))
        return "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class Pin:
    commit: str
    reason: str
    expires_at: str | None = None
    absent: frozenset[str] = _absent_field()


@dataclass(frozen=True, slots=True, kw_only=True)
class Host:
    system: str
    tags: tuple[str, ...]
    channel: str
    closure_hash: str | None = None
    pubkey: str | None = None
    pin: Pin | None = None
    absent: frozenset[str] = _absent_field()


@dataclass(frozen=True, slots=True, kw_only=True)
class Compliance:
    frameworks: tuple[str, ...]
    mode: str

    @property
    def enforcing(self) -> bool:
        return self.mode == "enforce"


@dataclass(frozen=True, slots=True, kw_only=True)
class Channel:
    rollout_policy: str
    reconcile_interval_minutes: int
    freshness_window: int
    """Minutes."""
    signing_interval_minutes: int
    compliance: Compliance


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyWave:
    selector: Selector
    soak_minutes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutPolicy:
    strategy: str
    waves: tuple[PolicyWave, ...]
    health_gate: Mapping[str, Any]
    """Carried to manifests, not evaluated (lifecycle §3.6)."""
    on_health_failure: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Wave:
    hosts: tuple[str, ...]
    soak_minutes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Edge:
    """`gated` waits until `gates` is done (hosts or channels)."""

    gated: str
    gates: str
    reason: str | None = None
    legacy: bool = field(default=False, compare=False)
    """Parsed from the legacy `{before, after}` channel-edge form; emitted back so."""
    absent: frozenset[str] = _absent_field()


@dataclass(frozen=True, slots=True, kw_only=True)
class DisruptionBudget:
    selector: Selector
    max_in_flight: int | None = None
    max_in_flight_pct: int | None = None
    absent: frozenset[str] = _absent_field()


@dataclass(frozen=True, slots=True, kw_only=True)
class Meta:
    schema_version: int = 1
    signed_at: str | None = None
    """Kept as the original string: re-embedded in hashed manifests."""
    ci_commit: str | None = None
    signature_algorithm: str | None = None
    absent: frozenset[str] = _absent_field()


@dataclass(frozen=True, slots=True, kw_only=True)
class Fleet:
    schema_version: int
    hosts: Mapping[str, Host]
    channels: Mapping[str, Channel]
    waves: Mapping[str, tuple[Wave, ...]]
    meta: Meta
    rollout_policies: Mapping[str, RolloutPolicy] = field(default_factory=dict)
    edges: tuple[Edge, ...] = ()
    channel_edges: tuple[Edge, ...] = ()
    disruption_budgets: tuple[DisruptionBudget, ...] = ()
    absent: frozenset[str] = _absent_field()
    _wave_of: Mapping[str, int] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # hostname → first wave of its channel listing it; checked per checkin, so an
        # index rather than a scan of every wave (10,000-host fleets).
        index: dict[str, int] = {}
        for channel, waves in self.waves.items():
            for i, wave in enumerate(waves):
                for name in wave.hosts:
                    host = self.hosts.get(name)
                    if host is not None and host.channel == channel:
                        index.setdefault(name, i)
        object.__setattr__(self, "_wave_of", index)

    def wave_index(self, hostname: str) -> int | None:
        """Position of the first wave of the host's channel that lists it."""
        return self._wave_of.get(hostname)

    def policy_for(self, channel: str) -> RolloutPolicy | None:
        ch = self.channels.get(channel)
        return None if ch is None else self.rollout_policies.get(ch.rollout_policy)

    def hosts_on(self, channel: str) -> list[str]:
        return sorted(name for name, h in self.hosts.items() if h.channel == channel)


# --- parsing -----------------------------------------------------------------


def _absent(r: Reader, *keys: str) -> frozenset[str]:
    return frozenset(k for k in keys if not r.has(k))


def parse_selector(r: Reader) -> Selector:
    return Selector(
        tags=r.str_list("tags", default=()),
        tags_any=r.str_list("tagsAny", default=()),
        hosts=r.str_list("hosts", default=()),
        channel=r.opt_str("channel"),
        all=bool(r.opt_bool("all")),
    )


def _parse_host(r: Reader) -> Host:
    pin_r = r.opt_sub("pin")
    pin = None
    if pin_r is not None:
        pin = Pin(
            commit=pin_r.str("commit"),
            reason=pin_r.str("reason"),
            expires_at=pin_r.opt_str("expiresAt"),
            absent=_absent(pin_r, "expiresAt"),
        )
    return Host(
        system=r.str("system"),
        tags=r.str_list("tags"),
        channel=r.str("channel"),
        closure_hash=r.opt_str("closureHash"),
        pubkey=r.opt_str("pubkey"),
        pin=pin,
        absent=_absent(r, "closureHash", "pubkey", "pin"),
    )


def _parse_channel(r: Reader) -> Channel:
    c = r.sub("compliance")
    return Channel(
        rollout_policy=r.str("rolloutPolicy"),
        reconcile_interval_minutes=r.int("reconcileIntervalMinutes"),
        freshness_window=r.int("freshnessWindow"),
        signing_interval_minutes=r.int("signingIntervalMinutes"),
        compliance=Compliance(frameworks=c.str_list("frameworks"), mode=c.str("mode")),
    )


def _parse_policy(r: Reader) -> RolloutPolicy:
    return RolloutPolicy(
        strategy=r.str("strategy"),
        waves=tuple(
            PolicyWave(
                selector=parse_selector(w.sub("selector")), soak_minutes=w.int("soakMinutes")
            )
            for w in r.list_of("waves")
        ),
        health_gate=dict(r.sub("healthGate").obj) if r.has("healthGate") else {},
        on_health_failure=r.one_of("onHealthFailure", HEALTH_FAILURE_POLICIES),
    )


def _parse_edge(r: Reader, *, channel: bool) -> Edge:
    if channel and not r.has("gated") and r.has("before") and r.has("after"):
        return Edge(
            gated=r.str("after"),
            gates=r.str("before"),
            reason=r.opt_str("reason"),
            legacy=True,
            absent=_absent(r, "reason"),
        )
    return Edge(
        gated=r.str("gated"),
        gates=r.str("gates"),
        reason=r.opt_str("reason"),
        absent=_absent(r, "reason"),
    )


def parse_budget(r: Reader) -> DisruptionBudget:
    return DisruptionBudget(
        selector=parse_selector(r.sub("selector")),
        max_in_flight=r.opt_int("maxInFlight"),
        max_in_flight_pct=r.opt_int("maxInFlightPct"),
        absent=_absent(r, "maxInFlight", "maxInFlightPct"),
    )


def parse_meta(r: Reader) -> Meta:
    return Meta(
        schema_version=r.int("schemaVersion"),
        signed_at=r.opt_str("signedAt"),
        ci_commit=r.opt_str("ciCommit"),
        signature_algorithm=r.opt_str("signatureAlgorithm"),
        absent=_absent(r, "signedAt", "ciCommit", "signatureAlgorithm"),
    )


def parse_fleet(value: Any, *, source: str = "fleet.resolved.json") -> Fleet:
    """Validate a parsed fleet document; errors name the source and the field."""
    r = Reader.root(value, source)
    waves_r = r.sub("waves")
    waves = {
        ch: tuple(
            Wave(hosts=w.str_list("hosts"), soak_minutes=w.int("soakMinutes"))
            for w in waves_r.list_of(ch)
        )
        for ch in waves_r.obj
    }
    return Fleet(
        schema_version=r.int("schemaVersion"),
        hosts={name: _parse_host(h) for name, h in r.items("hosts")},
        channels={name: _parse_channel(c) for name, c in r.items("channels")},
        waves=waves,
        meta=parse_meta(r.sub("meta")),
        rollout_policies={
            n: _parse_policy(p) for n, p in r.items("rolloutPolicies", optional=True)
        },
        edges=tuple(_parse_edge(e, channel=False) for e in r.list_of("edges", optional=True)),
        channel_edges=tuple(
            _parse_edge(e, channel=True) for e in r.list_of("channelEdges", optional=True)
        ),
        disruption_budgets=tuple(
            parse_budget(b) for b in r.list_of("disruptionBudgets", optional=True)
        ),
        absent=_absent(r, "rolloutPolicies", "edges", "channelEdges", "disruptionBudgets"),
    )


# --- emitting ----------------------------------------------------------------


def _put(out: dict[str, Any], key: str, value: Any, absent: frozenset[str]) -> None:
    """Emit `key` unless it was absent in the source and still carries no value."""
    if key in absent and value in (None, [], {}):
        return
    out[key] = value


def dump_selector(s: Selector) -> dict[str, Any]:
    return {
        "all": s.all,
        "channel": s.channel,
        "hosts": list(s.hosts),
        "tags": list(s.tags),
        "tagsAny": list(s.tags_any),
    }


def _dump_host(h: Host) -> dict[str, Any]:
    out: dict[str, Any] = {"system": h.system, "tags": list(h.tags), "channel": h.channel}
    _put(out, "closureHash", h.closure_hash, h.absent)
    _put(out, "pubkey", h.pubkey, h.absent)
    if h.pin is not None:
        pin: dict[str, Any] = {"commit": h.pin.commit, "reason": h.pin.reason}
        _put(pin, "expiresAt", h.pin.expires_at, h.pin.absent)
        out["pin"] = pin
    elif "pin" not in h.absent:
        out["pin"] = None
    return out


def _dump_edge(e: Edge) -> dict[str, Any]:
    out: dict[str, Any] = (
        {"before": e.gates, "after": e.gated} if e.legacy else {"gated": e.gated, "gates": e.gates}
    )
    _put(out, "reason", e.reason, e.absent)
    return out


def dump_budget(b: DisruptionBudget) -> dict[str, Any]:
    out: dict[str, Any] = {"selector": dump_selector(b.selector)}
    _put(out, "maxInFlight", b.max_in_flight, b.absent)
    _put(out, "maxInFlightPct", b.max_in_flight_pct, b.absent)
    return out


def dump_meta(m: Meta) -> dict[str, Any]:
    out: dict[str, Any] = {"schemaVersion": m.schema_version}
    _put(out, "signedAt", m.signed_at, m.absent)
    _put(out, "ciCommit", m.ci_commit, m.absent)
    _put(out, "signatureAlgorithm", m.signature_algorithm, m.absent)
    return out


def dump_fleet(f: Fleet) -> dict[str, Any]:
    out: dict[str, Any] = {
        "schemaVersion": f.schema_version,
        "hosts": {n: _dump_host(h) for n, h in f.hosts.items()},
        "channels": {
            n: {
                "rolloutPolicy": c.rollout_policy,
                "reconcileIntervalMinutes": c.reconcile_interval_minutes,
                "freshnessWindow": c.freshness_window,
                "signingIntervalMinutes": c.signing_interval_minutes,
                "compliance": {
                    "frameworks": list(c.compliance.frameworks),
                    "mode": c.compliance.mode,
                },
            }
            for n, c in f.channels.items()
        },
        "waves": {
            ch: [{"hosts": list(w.hosts), "soakMinutes": w.soak_minutes} for w in ws]
            for ch, ws in f.waves.items()
        },
        "meta": dump_meta(f.meta),
    }
    policies = {
        n: {
            "strategy": p.strategy,
            "waves": [
                {"selector": dump_selector(w.selector), "soakMinutes": w.soak_minutes}
                for w in p.waves
            ],
            "healthGate": dict(p.health_gate),
            "onHealthFailure": p.on_health_failure,
        }
        for n, p in f.rollout_policies.items()
    }
    _put(out, "rolloutPolicies", policies, f.absent)
    _put(out, "edges", [_dump_edge(e) for e in f.edges], f.absent)
    _put(out, "channelEdges", [_dump_edge(e) for e in f.channel_edges], f.absent)
    _put(out, "disruptionBudgets", [dump_budget(b) for b in f.disruption_budgets], f.absent)
    return out
