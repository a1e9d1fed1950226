"""Control-plane actions: what one reconcile tick asks the CP to do (lifecycle §1, §6).

Only SoakHost, ConvergeRollout, PromoteWave and HaltRollout change stored state (plus
the debounce map for RolloutDeferred/OpenRollout); the rest are journal lines: real
dispatch happens per checkin, real rollback through the checkin reply (H12).

`dump_action`/`parse_action` use the fixture form of lifecycle §6, the only snake_case
JSON of the project: `{"action": "<snake tag>", <field>: …}` with the field names below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Final, TypeAlias

from .jsonfields import Reader
from .timeutil import format_instant, parse_instant


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenRollout:
    channel: str
    target_ref: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchHost:
    rollout: str
    host: str
    target_ref: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PromoteWave:
    rollout: str
    new_wave: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ConvergeRollout:
    rollout: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HaltRollout:
    rollout: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackHost:
    rollout: str
    host: str
    target_ref: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakHost:
    rollout: str
    host: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelUnknown:
    channel: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Skip:
    host: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WaveBlocked:
    rollout: str
    blocked_wave: int
    failing_hosts: tuple[str, ...]
    failing_events_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutDeferred:
    channel: str
    target_ref: str
    blocked_by: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RotateTrustRoot:
    which: str
    """Trust slot: `ciReleaseKey` or `orgRootKey`."""
    retire_at: datetime


Action: TypeAlias = (
    OpenRollout
    | DispatchHost
    | PromoteWave
    | ConvergeRollout
    | HaltRollout
    | RollbackHost
    | SoakHost
    | ChannelUnknown
    | Skip
    | WaveBlocked
    | RolloutDeferred
    | RotateTrustRoot
)

ACTION_TAGS: Final[Mapping[type[Action], str]] = {
    OpenRollout: "open_rollout",
    DispatchHost: "dispatch_host",
    PromoteWave: "promote_wave",
    ConvergeRollout: "converge_rollout",
    HaltRollout: "halt_rollout",
    RollbackHost: "rollback_host",
    SoakHost: "soak_host",
    ChannelUnknown: "channel_unknown",
    Skip: "skip",
    WaveBlocked: "wave_blocked",
    RolloutDeferred: "rollout_deferred",
    RotateTrustRoot: "rotate_trust_root",
}


def _json_value(value: object) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, datetime):
        return format_instant(value)
    return value


def dump_action(action: Action) -> dict[str, Any]:
    """`{"action": <tag>, …fields}`; field names are the record's (snake_case)."""
    out: dict[str, Any] = {"action": ACTION_TAGS[type(action)]}
    for f in fields(action):
        out[f.name] = _json_value(getattr(action, f.name))
    return out


def dump_actions(actions: list[Action]) -> list[dict[str, Any]]:
    return [dump_action(a) for a in actions]


def _count(r: Reader, key: str) -> int:
    n = r.int(key)
    if n < 0:
        raise r.fail(key, f"expected a non-negative integer, got {n}")
    return n


_PARSERS: Final[Mapping[str, Callable[[Reader], Action]]] = {
    "open_rollout": lambda r: OpenRollout(channel=r.str("channel"), target_ref=r.str("target_ref")),
    "dispatch_host": lambda r: DispatchHost(
        rollout=r.str("rollout"), host=r.str("host"), target_ref=r.str("target_ref")
    ),
    "promote_wave": lambda r: PromoteWave(rollout=r.str("rollout"), new_wave=_count(r, "new_wave")),
    "converge_rollout": lambda r: ConvergeRollout(rollout=r.str("rollout")),
    "halt_rollout": lambda r: HaltRollout(rollout=r.str("rollout"), reason=r.str("reason")),
    "rollback_host": lambda r: RollbackHost(
        rollout=r.str("rollout"), host=r.str("host"), target_ref=r.str("target_ref")
    ),
    "soak_host": lambda r: SoakHost(rollout=r.str("rollout"), host=r.str("host")),
    "channel_unknown": lambda r: ChannelUnknown(channel=r.str("channel")),
    "skip": lambda r: Skip(host=r.str("host"), reason=r.str("reason")),
    "wave_blocked": lambda r: WaveBlocked(
        rollout=r.str("rollout"),
        blocked_wave=_count(r, "blocked_wave"),
        failing_hosts=r.str_list("failing_hosts"),
        failing_events_count=_count(r, "failing_events_count"),
    ),
    "rollout_deferred": lambda r: RolloutDeferred(
        channel=r.str("channel"),
        target_ref=r.str("target_ref"),
        blocked_by=r.str("blocked_by"),
        reason=r.str("reason"),
    ),
    "rotate_trust_root": lambda r: RotateTrustRoot(
        which=r.str("which"),
        retire_at=parse_instant(r.str("retire_at"), source=r.source, field=r.field("retire_at")),
    ),
}


def parse_action(value: Any, *, source: str = "action", path: str = "") -> Action:
    """Inverse of `dump_action`; errors name the source and the field."""
    r = Reader.root(value, source) if not path else _nested(value, source, path)
    return _PARSERS[r.one_of("action", tuple(_PARSERS))](r)


def parse_actions(value: Any, *, source: str = "expected.json") -> list[Action]:
    """A JSON array of actions (the expected.json form)."""
    if not isinstance(value, list):
        raise Reader.root({}, source).fail("", "expected a JSON array of actions")
    return [parse_action(v, source=source, path=f"[{i}]") for i, v in enumerate(value)]


def _nested(value: Any, source: str, path: str) -> Reader:
    if not isinstance(value, dict):
        raise Reader(source, "", {}).fail(path, "expected an object")
    return Reader(source, path, value)
