"""Releases for tests, the simulator and the sample job: keys, fleets, signed bytes.

This is the CI side of the contract (protocol §2): it writes canonical bytes and a
raw detached signature, exactly what the CP and the agents verify. Everything is
deterministic given its inputs so simulated runs and tests are repeatable. It lives
with the simulated forge/CI (the layout's home for CI), below `harness`: the harness,
tests and benchmarks import it from here, and `fleet_sim` imports nothing of `harness`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nixfleet.core.canonical import canonical_bytes, load_json
from nixfleet.core.closure import NIX_BASE32
from nixfleet.core.fleet import parse_fleet
from nixfleet.core.hostkey import public_key_of
from nixfleet.core.manifest import manifest_bytes, project_manifests, rollout_id
from nixfleet.core.signing import (
    ECDSA_P256,
    ED25519,
    P256_ORDER,
    PrivateKey,
    private_key_from_seed,
    public_key_json,
    seed_len,
    sign,
)
from nixfleet.core.timeutil import format_instant


def seeded_key(algorithm: str, label: str) -> PrivateKey:
    """A key derived from a label: the same label gives the same key (tests, sims)."""
    text = f"nixfleet-test-key:{algorithm}:{label}".encode()
    # sha256 for ed25519 (the keys every fixture already has); P-256 wants more bytes.
    seed = hashlib.sha256(text).digest() if algorithm == ED25519 else hashlib.sha512(text).digest()
    return private_key_from_seed(algorithm, seed[: seed_len(algorithm)])


def host_key(hostname: str) -> Ed25519PrivateKey:
    key = seeded_key("ed25519", f"host:{hostname}")
    assert isinstance(key, Ed25519PrivateKey)
    return key


def host_pubkey_line(hostname: str) -> str:
    return public_key_of(host_key(hostname), comment=f"root@{hostname}").line()


def fake_closure(hostname: str, generation: str | int) -> str:
    """A store basename `<32 nix-base32 chars>-nixos-system-<host>-<gen>`."""
    digest = hashlib.sha256(f"{hostname}/{generation}".encode()).digest()
    chars = "".join(NIX_BASE32[b % 32] for b in digest[:32])
    return f"{chars}-nixos-system-{hostname}-{generation}"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostDecl:
    channel: str = "stable"
    closure: str | None = None
    tags: tuple[str, ...] = ()
    pubkey: str | None = None
    """OpenSSH line of the host key; default: the seeded `host_key(name)`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelDecl:
    policy: str = "p1"
    waves: Sequence[Sequence[str]] = ()
    soak_minutes: int = 0
    freshness_window_minutes: int = 43200
    compliance_mode: str = "permissive"
    all_at_once: bool = False
    """An empty wave list (lifecycle §3.2: every host at once); `waves` is ignored."""
    gated_by: tuple[str, ...] = ()
    """Predecessor channels: a `channelEdges` entry `{gates: p, gated: this}` each."""


class Signer(Protocol):
    """Where CI's release key lives: the port a TPM-held key plugs into
    (`hw.tpm.TpmKey`). `raw_s`: its P-256 signatures keep the s it drew (a TPM's do);
    False: they come low-s (`nixfleet.core.signing.sign`)."""

    @property
    def algorithm(self) -> str: ...

    @property
    def raw_s(self) -> bool: ...

    def public_key_json(self) -> dict[str, str]: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class KeySigner:
    """A software key: the production signer, low-s for P-256."""

    key: PrivateKey
    raw_s: bool = False

    @property
    def algorithm(self) -> str:
        return ECDSA_P256 if not isinstance(self.key, Ed25519PrivateKey) else ED25519

    def public_key_json(self) -> dict[str, str]:
        return public_key_json(self.key)

    def sign(self, message: bytes) -> bytes:
        return sign(self.key, message)


RAW_S_DRAWS = 64
"""A raw-s signer is asked at most this often for a signature of the wanted s (each
draw is high with probability ½: 2⁻⁶⁴ to fail)."""


@dataclass(slots=True)
class ReleaseKit:
    """The signing side of a fleet: a CI release key and the org root key."""

    algorithm: str = "ed25519"
    label: str = "fleet"
    high_s: bool = False
    """P-256 only: emit signatures as their high-s twin (r, n−s), as TPM2_Sign does
    about half the time (seed 000 `BadSignature`); while set always high, so every
    verify takes the normalising path. With a raw-s signer (a TPM) the kit publishes
    the first signature the signer itself drew with the wanted s, high while set, low
    otherwise: every signature stays exactly as the TPM made it."""
    pick_s: bool = True
    """With a raw-s signer: False publishes each signature as first drawn, whatever
    `high_s` says (s > n/2 about half the time)."""
    signer: Signer | None = None
    """CI's release key; None: the seeded software key `release_key`."""
    release_key: PrivateKey = field(init=False)
    org_root_key: Ed25519PrivateKey = field(init=False)

    def __post_init__(self) -> None:
        self.release_key = seeded_key(self.algorithm, f"{self.label}:release")
        org = seeded_key("ed25519", f"{self.label}:org-root")
        assert isinstance(org, Ed25519PrivateKey)
        self.org_root_key = org
        if self.signer is None:
            self.signer = KeySigner(self.release_key)
        elif self.signer.algorithm != self.algorithm:
            raise ValueError(f"signer is {self.signer.algorithm}, kit is {self.algorithm}")

    def _signer(self) -> Signer:
        assert self.signer is not None  # set in __post_init__
        return self.signer

    def trust(self, *, cache_keys: Iterable[str] = ()) -> dict[str, Any]:
        return {
            "schemaVersion": 1,
            "ciReleaseKey": {"current": self._signer().public_key_json()},
            "cacheKeys": list(cache_keys),
            "orgRootKey": {"current": public_key_json(self.org_root_key)},
        }

    def sign(self, doc: Mapping[str, Any]) -> tuple[bytes, bytes]:
        """Canonical bytes and their raw signature, as CI publishes them."""
        raw = canonical_bytes(doc)
        return raw, self._sign(raw)

    def _sign(self, message: bytes) -> bytes:
        signer = self._signer()
        high = self.high_s and self.algorithm == ECDSA_P256
        if not (signer.raw_s and self.algorithm == ECDSA_P256):
            sig = signer.sign(message)
            return p256_twin(sig) if high else sig
        if not self.pick_s:
            return signer.sign(message)
        for _ in range(RAW_S_DRAWS):
            sig = signer.sign(message)
            if is_high_s(sig) == high:
                return sig
        raise RuntimeError(f"{RAW_S_DRAWS} signatures in a row with the other s")

    def sign_manifests(self, fleet_raw: bytes) -> dict[str, tuple[str, bytes, bytes]]:
        """CI's rollout manifests for a signed fleet: channel → (rolloutId, bytes, sig)."""
        fleet = parse_fleet(load_json(fleet_raw))
        out = {}
        for channel, manifest in project_manifests(fleet, fleet_raw).items():
            body = manifest_bytes(manifest)
            out[channel] = (rollout_id(manifest), body, self._sign(body))
        return out


def is_high_s(sig: bytes) -> bool:
    """A P-256 `r‖s` with s > n/2."""
    return int.from_bytes(sig[32:], "big") > P256_ORDER // 2


def p256_twin(sig: bytes) -> bytes:
    """The other valid P-256 signature of the same message: (r, n − s)."""
    s = int.from_bytes(sig[32:], "big")
    return sig[:32] + (P256_ORDER - s).to_bytes(32, "big")


TAMPER_OFFSETS: Mapping[str, int] = {
    "artifact": 50,
    "artifact-signature": 10,
    "manifest-payload": 50,
    "manifest-signature": 10,
}
"""What CI's forge may serve tampered (`harness.fleet.TAMPER_MODES`), and the offset of
the byte flipped (the reference harness's corruption offsets)."""


def flip(data: bytes, offset: int) -> bytes:
    """`data` with the byte at `offset` XORed with 1."""
    return data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1 :]


def wave_plan(names: Sequence[str], waves: int) -> list[list[str]]:
    """`waves` waves of the hosts, canary first: 1 % (at least one), then the rest
    split evenly. The simulated and the real local fleets both plan their waves here."""
    if waves <= 1:
        return [list(names)]
    first = max(1, len(names) // 100)
    rest = list(names[first:])
    per = -(-len(rest) // (waves - 1))
    return [list(names[:first])] + [rest[i : i + per] for i in range(0, len(rest), per)]


def planned_channel(
    names: Sequence[str], waves: int, *, soak_minutes: int = 0, gated_by: Sequence[str] = ()
) -> ChannelDecl:
    """A channel of `names` in `waves` planned waves (`wave_plan`); 0: all-at-once."""
    return ChannelDecl(
        waves=wave_plan(names, waves) if waves else (),
        soak_minutes=soak_minutes,
        all_at_once=waves == 0,
        gated_by=tuple(gated_by),
    )


def meta(signed_at: datetime, ci_commit: str) -> dict[str, Any]:
    return {"schemaVersion": 1, "signedAt": format_instant(signed_at), "ciCommit": ci_commit}


def fleet_doc(
    hosts: Mapping[str, HostDecl],
    *,
    signed_at: datetime,
    ci_commit: str,
    channels: Mapping[str, ChannelDecl] | None = None,
    on_health_failure: str = "rollback-and-halt",
    disruption_budgets: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A `fleet.resolved.json` document; channels default to one wave of all their hosts."""
    chans = dict(channels or {})
    for decl in hosts.values():
        chans.setdefault(decl.channel, ChannelDecl())
    waves = {
        name: [
            {"hosts": list(w), "soakMinutes": ch.soak_minutes}
            for w in _wave_lists(name, ch, hosts)
        ]
        for name, ch in chans.items()
    }
    policies = {
        ch.policy: {
            "strategy": "staged",
            "waves": [],
            "healthGate": {},
            "onHealthFailure": on_health_failure,
        }
        for ch in chans.values()
    }
    return {
        "schemaVersion": 1,
        "hosts": {
            name: {
                "system": "x86_64-linux",
                "tags": list(d.tags),
                "channel": d.channel,
                "closureHash": d.closure,
                "pubkey": d.pubkey or host_pubkey_line(name),
            }
            for name, d in sorted(hosts.items())
        },
        "channels": {
            name: {
                "rolloutPolicy": ch.policy,
                "reconcileIntervalMinutes": 1,
                "freshnessWindow": ch.freshness_window_minutes,
                "signingIntervalMinutes": 60,
                "compliance": {"frameworks": [], "mode": ch.compliance_mode},
            }
            for name, ch in chans.items()
        },
        "rolloutPolicies": policies,
        "waves": waves,
        "edges": [],
        "channelEdges": [
            {"gates": p, "gated": name} for name, ch in chans.items() for p in ch.gated_by
        ],
        "disruptionBudgets": list(disruption_budgets),
        "meta": meta(signed_at, ci_commit),
    }


def _wave_lists(
    name: str, ch: ChannelDecl, hosts: Mapping[str, HostDecl]
) -> Sequence[Sequence[str]]:
    """The channel's waves; default one wave of all its hosts, none when all-at-once."""
    if ch.all_at_once:
        return []
    return ch.waves or [sorted(h for h, d in hosts.items() if d.channel == name)]


def revocations_doc(
    entries: Mapping[str, datetime],
    *,
    signed_at: datetime,
    ci_commit: str,
    reasons: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The signed revocations sidecar: hostname → notBefore (reason "test" unless
    `reasons` names one)."""
    why = reasons or {}
    return {
        "schemaVersion": 1,
        "revocations": [
            {
                "hostname": h,
                "notBefore": format_instant(nb),
                "reason": why.get(h, "test"),
                "revokedBy": "ci",
            }
            for h, nb in sorted(entries.items())
        ],
        "meta": meta(signed_at, ci_commit),
    }


def ci_commit(n: int) -> str:
    return hashlib.sha1(f"commit-{n}".encode()).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
