"""Scenario files: `SimConfig` fields and a list of faults, in TOML or JSON.

    name = "cp-wipe-mid-rollout"     # optional, informational
    hosts = 200
    waves = 3
    policy = "rollback-and-halt"
    seed = 1
    poll_secs = 60

    [[faults]]
    kind = "CpWipe"
    at = 600
    duration = 20

    [[faults]]
    kind = "Partition"
    hosts = 0.1            # a fraction of the fleet, or a list of host names
    at = 300
    duration = 120

The same field rules serve the CLI: `--fault CpWipe:at=600,duration=20` and
`--param hosts=100,500`, where values are text (lists are joined with `+`).
Every error is one `BadInput` line naming the file (or flag) and the field.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from nixfleet.agent.config import SWITCH_TIMEOUT_BOUNDS
from nixfleet.core.agent import MIN_CONFIRM_WINDOW_SECS
from nixfleet.core.errors import ParseError
from nixfleet.core.fleet import HEALTH_FAILURE_POLICIES
from nixfleet.cp import config as cp_config

from .faults import FAULTS, Fault
from .network import Latency
from .world import SimConfig

# --- typed fields ------------------------------------------------------------------------

Check = Callable[[Any], str | None]
"""A range check: None when fine, else the problem."""


@dataclass(frozen=True, slots=True)
class FieldType:
    kind: str
    """int, float, str, bool, pair (two numbers), hosts (fraction or names), latency,
    datetime."""
    optional: bool = False
    check: Check | None = None


def _at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be ≥ {low:g}, got {v!r}"


def _above(low: float) -> Check:
    return lambda v: None if v > low else f"must be > {low:g}, got {v!r}"


def _within(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"must be ≥ {low:g} and ≤ {high:g}, got {v!r}"


def _fraction(v: Any) -> str | None:
    return None if 0.0 <= v <= 1.0 else f"must be within 0..1, got {v!r}"


def _one_of(options: Sequence[str]) -> Check:
    return lambda v: None if v in options else f"must be one of {', '.join(options)}; got {v!r}"


def _ordered_pair(v: Any) -> str | None:
    lo, hi = v
    return None if 0 <= lo <= hi else f"must be two numbers 0 ≤ low ≤ high, got {list(v)!r}"


CONFIG_FIELDS: dict[str, FieldType] = {
    "hosts": FieldType("int", check=_at_least(1)),
    "waves": FieldType("int", check=_at_least(1)),
    "policy": FieldType("str", check=_one_of(HEALTH_FAILURE_POLICIES)),
    "seed": FieldType("int"),
    "duration": FieldType("float", check=_above(0)),
    "poll_secs": FieldType("float", check=_above(0)),
    "soak_minutes": FieldType("int", check=_at_least(0)),
    "confirm_window_secs": FieldType("int", check=_at_least(MIN_CONFIRM_WINDOW_SECS)),
    "agent_switch_timeout_secs": FieldType("float", check=_within(*SWITCH_TIMEOUT_BOUNDS)),
    "release_at": FieldType("float", check=_at_least(0)),
    "activation_secs": FieldType("pair", check=_ordered_pair),
    "latency": FieldType("latency"),
    "loss": FieldType("float", check=_fraction),
    "bandwidth": FieldType("float", check=_above(0)),
    "stop_when_settled": FieldType("bool"),
    "settle_polls": FieldType("int", check=_at_least(0)),
    "epoch": FieldType("datetime"),
}
CONFIG_ALIASES = {"poll": "poll_secs"}
SCENARIO_META = frozenset({"name", "description", "source"})
"""Informational top-level keys a scenario file may carry."""

FAULT_INTERNAL = frozenset({"when", "picked", "previous", "check_every"})
"""Fault fields a file cannot set: Python-only conditions and run-time state."""
FAULT_CHECKS: dict[str, Check] = {
    "at": _at_least(0),
    "duration": _at_least(0),
    "probability": _fraction,
    "seconds": _ordered_pair,
    "from_generation": _at_least(0),
}
_ANNOTATION_KINDS = {
    "float": "float", "int": "int", "str": "str", "bool": "bool",
    "HostPick": "hosts", "tuple[float, float]": "pair",
}  # fmt: skip


def fault_fields(cls: type[Fault]) -> dict[str, FieldType]:
    """The fields of a fault kind that a scenario may set, with their types."""
    out: dict[str, FieldType] = {}
    for f in dataclasses.fields(cls):
        if f.name in FAULT_INTERNAL or not f.init:
            continue
        annotation = str(f.type).replace(" ", "")
        optional = annotation.endswith("|None")
        base = annotation.removesuffix("|None")
        kind = next((k for a, k in _ANNOTATION_KINDS.items() if a.replace(" ", "") == base), None)
        if kind is None:  # an annotation we do not know: go by the default's type
            default = f.default if f.default is not dataclasses.MISSING else None
            kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(type(default))
        if kind is not None:
            out[f.name] = FieldType(kind, optional=optional, check=FAULT_CHECKS.get(f.name))
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _coerce_text(ft: FieldType, text: str) -> Any:
    """A value given as text (a CLI flag) → the field's type; ValueError if it is not."""
    if ft.optional and text.lower() in ("none", "null", ""):
        return None
    match ft.kind:
        case "int":
            return int(text)
        case "float":
            return float(text)
        case "bool":
            if text.lower() in ("true", "yes", "1", "on"):
                return True
            if text.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(text)
        case "pair":
            parts = text.split("+")
            if len(parts) != 2:
                raise ValueError(text)
            return (float(parts[0]), float(parts[1]))
        case "hosts":
            try:
                return float(text)
            except ValueError:
                return [h for h in text.split("+") if h]
        case "latency":
            median, _, sigma = text.partition("+")
            return {"median": float(median), "sigma": float(sigma or 0.5)}
        case _:
            return text


EXPECTED = {
    "int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
    "pair": "two numbers", "hosts": "a fraction 0..1 or a list of host names",
    "latency": "a table {median, sigma}", "datetime": "a date-time with a UTC offset",
}  # fmt: skip


def coerce(ft: FieldType, value: Any, source: str, name: str, *, text: bool = False) -> Any:
    """Validate one field's value (converted from text when `text`, as flags give it);
    ParseError naming the source and the field."""

    def bad(problem: str | None = None) -> ParseError:
        shown = json.dumps(value, default=str)
        return ParseError(source, name, problem or f"expected {EXPECTED[ft.kind]}, got {shown}")

    if text and isinstance(value, str) and ft.kind not in ("str", "datetime"):
        try:
            value = _coerce_text(ft, value)
        except ValueError:
            raise bad() from None
    if value is None:
        if ft.optional:
            return None
        raise bad()
    out: Any
    match ft.kind:
        case "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise bad()
            out = value
        case "float":
            if not _number(value) or not math.isfinite(value):
                raise bad()
            out = float(value)
        case "str":
            if not isinstance(value, str) or not value:
                raise bad()
            out = value
        case "bool":
            if not isinstance(value, bool):
                raise bad()
            out = value
        case "pair":
            if (
                not isinstance(value, list | tuple)
                or len(value) != 2
                or not all(_number(v) for v in value)
            ):
                raise bad()
            out = (float(value[0]), float(value[1]))
        case "hosts":
            if _number(value):
                out = float(value)
                problem = _fraction(out)
                if problem:
                    raise bad(f"a fraction of the fleet {problem}")
            elif isinstance(value, list) and value and all(isinstance(h, str) and h for h in value):
                out = list(value)
            else:
                raise bad()
        case "latency":
            if (
                not isinstance(value, Mapping)
                or set(value) - {"median", "sigma"}
                or not all(_number(v) for v in value.values())
            ):
                raise bad()
            median, sigma = float(value.get("median", 0.02)), float(value.get("sigma", 0.5))
            if median <= 0 or sigma < 0:
                raise bad("median must be > 0 and sigma ≥ 0")
            out = {"median": median, "sigma": sigma}
        case "datetime":
            if isinstance(value, str):
                try:
                    value = datetime.fromisoformat(value)
                except ValueError:
                    raise bad() from None
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise bad()
            out = value
        case _:
            raise bad(f"unsupported field type {ft.kind}")
    if ft.check is not None:
        problem = ft.check(out)
        if problem:
            raise bad(problem)
    return out


# --- faults ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """A fault as data: picklable, JSON-able, built fresh for every run."""

    kind: str
    fields: Mapping[str, Any]
    source: str = field(default="", compare=False)
    """Where it was given (a file, a flag), for error lines."""
    where: str = field(default="", compare=False)
    """Its place in that source, e.g. faults[2]."""

    def build(self) -> Fault:
        return FAULTS[self.kind](**copy.deepcopy(dict(self.fields)))


def fault_spec(
    kind: Any, raw: Mapping[str, Any], source: str, where: str = "", *, text: bool = False
) -> FaultSpec:
    """Validate a fault's kind and fields (`where` prefixes field names, e.g. faults[2];
    `text`: values are flag text to convert)."""
    prefix = f"{where}." if where else ""
    if not isinstance(kind, str) or kind not in FAULTS:
        raise ParseError(
            source,
            f"{prefix}kind",
            f"unknown fault kind {json.dumps(kind)}; known: {', '.join(FAULTS)}",
        )
    types = fault_fields(FAULTS[kind])
    fields: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in types:
            known = ", ".join(sorted(types))
            raise ParseError(source, f"{prefix}{name}", f"not a field of {kind} (fields: {known})")
        fields[name] = coerce(types[name], value, source, f"{prefix}{name}", text=text)
    if fields.get("at") is None:
        raise ParseError(
            source, f"{prefix}at", "required: the simulated second to invoke the fault at"
        )
    spec = FaultSpec(kind, fields, source, where)
    try:
        spec.build()
    except (TypeError, ValueError) as exc:
        raise ParseError(source, where or kind, str(exc)) from None
    return spec


def parse_fault_flag(text: str) -> FaultSpec:
    """`KIND:key=val,key=val` (the `--fault` flag); lists inside a value use `+`."""
    source = f"--fault {text}"
    kind, _, rest = text.partition(":")
    raw: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ParseError(source, item, "expected key=value")
        if key in raw:
            raise ParseError(source, key, "given twice")
        raw[key.strip()] = value.strip()
    return fault_spec(kind.strip(), raw, source, text=True)


def check_fault_hosts(config: SimConfig, faults: Sequence[FaultSpec], source: str) -> None:
    """Named hosts in faults must exist in this fleet, and fault names be distinct
    (caught before the run starts, naming where the fault was given)."""
    names = set(config.host_names())
    seen: set[str] = set()
    for spec in faults:
        origin, prefix = spec.source or source, f"{spec.where}." if spec.where else ""
        picked = spec.fields.get("hosts")
        if isinstance(picked, list):
            unknown = [h for h in picked if h not in names]
            if unknown:
                raise ParseError(
                    origin,
                    f"{prefix}hosts",
                    f"no such hosts in a {config.hosts}-host fleet: "
                    f"{', '.join(unknown[:5])} (names are {min(names)}…)",
                )
        name = str(spec.fields.get("name") or spec.kind)
        if name in seen:
            raise ParseError(
                origin, f"{prefix}name", f"a second fault named {name!r}; give one a name="
            )
        seen.add(name)


# --- scenarios -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """SimConfig field values and faults: everything but the seed-derived run."""

    config: Mapping[str, Any] = field(default_factory=dict)
    faults: tuple[FaultSpec, ...] = ()
    source: str = "command line"
    name: str = ""

    def with_config(self, **overrides: Any) -> Scenario:
        return dataclasses.replace(self, config={**self.config, **overrides})

    def with_faults(self, extra: Sequence[FaultSpec]) -> Scenario:
        return dataclasses.replace(self, faults=(*self.faults, *extra))

    def sim_config(self) -> SimConfig:
        """Build the SimConfig (faults fresh); names in faults checked against the fleet."""
        values = dict(self.config)
        if isinstance(values.get("latency"), Mapping):
            values["latency"] = Latency(**values["latency"])
        config = SimConfig(**values)
        # The simulated CP refuses it at start as `serve` does; say so as a setting.
        problem = cp_config.confirm_window_problem(
            config.confirm_window_secs, config.agent_switch_timeout_secs
        )
        if problem is not None:
            raise ParseError(self.source, "confirm_window_secs", problem)
        check_fault_hosts(config, self.faults, self.source)
        config.faults = [spec.build() for spec in self.faults]
        return config


def config_field(name: str, source: str) -> tuple[str, FieldType]:
    key = CONFIG_ALIASES.get(name, name)
    if key not in CONFIG_FIELDS:
        raise ParseError(
            source, name, f"not a simulator setting (settings: {', '.join(CONFIG_FIELDS)})"
        )
    return key, CONFIG_FIELDS[key]


def scenario_from_data(data: Any, source: str) -> Scenario:
    if not isinstance(data, Mapping):
        raise ParseError(source, "", "expected a table of settings at the top level")
    config: dict[str, Any] = {}
    faults: list[FaultSpec] = []
    name = ""
    for key, value in data.items():
        if key == "faults":
            if not isinstance(value, list):
                raise ParseError(source, "faults", "expected a list of fault tables")
            for i, raw in enumerate(value):
                where = f"faults[{i}]"
                if not isinstance(raw, Mapping):
                    raise ParseError(source, where, "expected a table with kind = …")
                body = {k: v for k, v in raw.items() if k != "kind"}
                faults.append(fault_spec(raw.get("kind"), body, source, where))
        elif key in SCENARIO_META:
            if not isinstance(value, str):
                raise ParseError(source, key, "expected a string")
            if key == "name":
                name = value
        else:
            field_name, ft = config_field(key, source)
            config[field_name] = coerce(ft, value, source, key)
    return Scenario(config=config, faults=tuple(faults), source=source, name=name)


def load_scenario(path: str | Path) -> Scenario:
    """Read a `.toml` or `.json` scenario file; BadInput (one line) if it is not valid."""
    p = Path(path)
    source = str(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ParseError(source, "", f"cannot read ({exc.strerror or exc})") from None
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ParseError(source, "", "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ParseError(source, "", f"not valid JSON ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ParseError(source, "", f"not valid TOML ({exc})") from None
    return scenario_from_data(data, source)


def parse_param(text: str) -> tuple[str, list[Any]]:
    """`--param hosts=100,500` → ("hosts", [100, 500]), each value validated."""
    source = f"--param {text}"
    name, eq, values = text.partition("=")
    if not eq or not name.strip() or not values.strip():
        raise ParseError(source, text, "expected name=value,value,…")
    key, ft = config_field(name.strip(), source)
    if key in ("latency", "epoch"):
        raise ParseError(source, name, "cannot be swept; set it in a scenario file")
    out = [coerce(ft, v.strip(), source, name.strip(), text=True) for v in values.split(",")]
    if len(set(map(repr, out))) != len(out):
        raise ParseError(source, name, "a value is given twice")
    return key, out
