"""The rollout manifest (protocol §2.2, lifecycle §3.7) and its content-addressed id.

`project_manifests` is the projection CI signs and the CP recomputes from the verified
fleet: both must produce the same bytes, so `signedAt` is copied as the original string
and `hostSet` and budget hosts are sorted. `rollout_id` is the lowercase hex sha256 of
the manifest's JCS bytes; any fleet change (even `meta.signedAt`) changes every id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .canonical import canonical_bytes, sha256_hex
from .closure import ClosureHash
from .fleet import (
    DisruptionBudget,
    Fleet,
    Meta,
    Selector,
    dump_meta,
    dump_selector,
    parse_meta,
    parse_selector,
)
from .jsonfields import Reader
from .wire import absent_keys, put_optional

MANIFEST_SCHEMA_VERSION = 1
DEFAULT_SIGNATURE_ALGORITHM = "ed25519"
UNKNOWN_COMMIT = "unknown"

_NO_ABSENT: frozenset[str] = frozenset()


def _absent_field() -> Any:
    return field(default=_NO_ABSENT, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostSetEntry:
    hostname: str
    wave_index: int
    target_closure: ClosureHash


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedBudget:
    """A disruption budget with its selector resolved over all hosts, frozen."""

    selector: Selector
    hosts: tuple[str, ...]
    max_in_flight: int | None = None
    max_in_flight_pct: int | None = None
    absent: frozenset[str] = _absent_field()


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutManifest:
    schema_version: int
    display_name: str
    channel: str
    channel_ref: str
    """The full ciCommit, or ""."""
    fleet_resolved_hash: str
    host_set: tuple[HostSetEntry, ...]
    health_gate: Mapping[str, Any]
    compliance_frameworks: tuple[str, ...]
    disruption_budgets: tuple[ResolvedBudget, ...]
    meta: Meta


# --- parsing -------------------------------------------------------------------


def _read_budget(r: Reader) -> ResolvedBudget:
    return ResolvedBudget(
        selector=parse_selector(r.sub("selector")),
        hosts=r.str_list("hosts"),
        max_in_flight=r.opt_int("maxInFlight"),
        max_in_flight_pct=r.opt_int("maxInFlightPct"),
        absent=absent_keys(r, "maxInFlight", "maxInFlightPct"),
    )


def parse_manifest(value: Any, *, source: str = "rollout manifest") -> RolloutManifest:
    r = Reader.root(value, source)
    return RolloutManifest(
        schema_version=r.int("schemaVersion"),
        display_name=r.str("displayName"),
        channel=r.str("channel"),
        channel_ref=r.str("channelRef"),
        fleet_resolved_hash=r.str("fleetResolvedHash"),
        host_set=tuple(
            HostSetEntry(
                hostname=e.str("hostname"),
                wave_index=e.int("waveIndex"),
                target_closure=ClosureHash(e.str("targetClosure")),
            )
            for e in r.list_of("hostSet")
        ),
        health_gate=dict(r.sub("healthGate").obj),
        compliance_frameworks=r.str_list("complianceFrameworks"),
        disruption_budgets=tuple(_read_budget(b) for b in r.list_of("disruptionBudgets")),
        meta=parse_meta(r.sub("meta")),
    )


# --- emitting ------------------------------------------------------------------


def _dump_budget(b: ResolvedBudget) -> dict[str, Any]:
    out: dict[str, Any] = {"selector": dump_selector(b.selector), "hosts": list(b.hosts)}
    put_optional(out, "maxInFlight", b.max_in_flight, b.absent)
    put_optional(out, "maxInFlightPct", b.max_in_flight_pct, b.absent)
    return out


def dump_manifest(m: RolloutManifest) -> dict[str, Any]:
    return {
        "schemaVersion": m.schema_version,
        "displayName": m.display_name,
        "channel": m.channel,
        "channelRef": m.channel_ref,
        "fleetResolvedHash": m.fleet_resolved_hash,
        "hostSet": [
            {"hostname": e.hostname, "waveIndex": e.wave_index, "targetClosure": e.target_closure}
            for e in m.host_set
        ],
        "healthGate": dict(m.health_gate),
        "complianceFrameworks": list(m.compliance_frameworks),
        "disruptionBudgets": [_dump_budget(b) for b in m.disruption_budgets],
        "meta": dump_meta(m.meta),
    }


def manifest_bytes(m: RolloutManifest) -> bytes:
    """The JCS bytes CI signs and the id hashes."""
    return canonical_bytes(dump_manifest(m), source="rollout manifest")


def rollout_id(m: RolloutManifest) -> str:
    return sha256_hex(manifest_bytes(m))


# --- projection ----------------------------------------------------------------


def resolve_budget(fleet: Fleet, budget: DisruptionBudget) -> ResolvedBudget:
    return ResolvedBudget(
        selector=budget.selector,
        hosts=tuple(sorted(n for n, h in fleet.hosts.items() if budget.selector.matches(n, h))),
        max_in_flight=budget.max_in_flight,
        max_in_flight_pct=budget.max_in_flight_pct,
    )


def _manifest_meta(meta: Meta) -> Meta:
    return Meta(
        schema_version=meta.schema_version,
        signed_at=meta.signed_at,
        ci_commit=meta.ci_commit,
        signature_algorithm=meta.signature_algorithm or DEFAULT_SIGNATURE_ALGORITHM,
    )


def project_manifests(fleet: Fleet, fleet_canonical_bytes: bytes) -> dict[str, RolloutManifest]:
    """One manifest per declared channel with ≥ 1 host that has a closureHash.

    `fleet_canonical_bytes` are the JCS bytes of the fleet as received (signed).
    """
    commit = fleet.meta.ci_commit
    fleet_hash = sha256_hex(fleet_canonical_bytes)
    budgets = tuple(resolve_budget(fleet, b) for b in fleet.disruption_budgets)
    meta = _manifest_meta(fleet.meta)
    out: dict[str, RolloutManifest] = {}
    for name in sorted(fleet.channels):
        channel = fleet.channels[name]
        host_set = tuple(
            HostSetEntry(
                hostname=hostname,
                wave_index=fleet.wave_index(hostname) or 0,
                target_closure=ClosureHash(host.closure_hash),
            )
            for hostname, host in sorted(fleet.hosts.items())
            if host.channel == name and host.closure_hash is not None
        )
        if not host_set:
            continue
        policy = fleet.policy_for(name)
        out[name] = RolloutManifest(
            schema_version=MANIFEST_SCHEMA_VERSION,
            display_name=f"{name}@{commit[:8] if commit else UNKNOWN_COMMIT}",
            channel=name,
            channel_ref=commit or "",
            fleet_resolved_hash=fleet_hash,
            host_set=host_set,
            health_gate=dict(policy.health_gate) if policy is not None else {},
            compliance_frameworks=channel.compliance.frameworks,
            disruption_budgets=budgets,
            meta=meta,
        )
    return out


def project_rollout_ids(fleet: Fleet, fleet_canonical_bytes: bytes) -> dict[str, str]:
    """Channel → rolloutId of its projected manifest."""
    return {ch: rollout_id(m) for ch, m in project_manifests(fleet, fleet_canonical_bytes).items()}


def listed_hosts(m: RolloutManifest) -> frozenset[tuple[str, int]]:
    """The manifest's (hostname, waveIndex) pairs."""
    return frozenset((e.hostname, e.wave_index) for e in m.host_set)


def lists_host(listed: frozenset[tuple[str, int]], hostname: str, wave_index: int | None) -> bool:
    """Whether `(hostname, waveIndex or 0)` is among a manifest's `listed_hosts`."""
    return (hostname, wave_index or 0) in listed


def manifest_lists_host(m: RolloutManifest, hostname: str, wave_index: int | None) -> bool:
    """Whether `(hostname, waveIndex or 0)` is in the manifest's hostSet."""
    return lists_host(listed_hosts(m), hostname, wave_index)
