"""Typed reads from parsed JSON that fail with a ParseError naming source and field.

Records parse with a `Reader` bound to a source name (a file path or `checkin body`)
and a dotted field path, so every error points at one field:
`fleet.json: hosts.h1.channel: expected a string, got 3`.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ParseError

_MISSING: Any = object()


def type_name(value: object) -> str:
    """`a string`, `an object`, `null`, …: how error messages name a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


@dataclass(frozen=True, slots=True)
class Reader:
    """A JSON object under `path` inside `source`."""

    source: builtins.str
    path: builtins.str
    obj: Mapping[builtins.str, Any]

    @classmethod
    def root(cls, value: Any, source: builtins.str) -> Reader:
        if not isinstance(value, dict):
            raise ParseError(source, "", f"expected a JSON object, got {type_name(value)}")
        return cls(source, "", value)

    def field(self, key: builtins.str) -> builtins.str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: builtins.str, problem: builtins.str) -> ParseError:
        return ParseError(self.source, self.field(key), problem)

    def has(self, key: builtins.str) -> builtins.bool:
        return key in self.obj

    def raw(self, key: builtins.str, default: Any = _MISSING) -> Any:
        if key not in self.obj:
            if default is _MISSING:
                raise self.fail(key, "missing")
            return default
        return self.obj[key]

    def _typed(
        self,
        key: builtins.str,
        kind: type | tuple[type, ...],
        what: builtins.str,
        optional: builtins.bool,
    ) -> Any:
        if key not in self.obj or (optional and self.obj[key] is None):
            if optional:
                return None
            raise self.fail(key, "missing")
        value = self.obj[key]
        if isinstance(value, bool) and kind is not bool:
            raise self.fail(key, f"expected {what}, got a boolean")
        if not isinstance(value, kind):
            raise self.fail(key, f"expected {what}, got {type_name(value)}")
        return value

    def str(self, key: builtins.str) -> builtins.str:
        value: builtins.str = self._typed(key, builtins.str, "a string", False)
        return value

    def opt_str(self, key: builtins.str) -> builtins.str | None:
        value: builtins.str | None = self._typed(key, builtins.str, "a string", True)
        return value

    def int(self, key: builtins.str) -> builtins.int:
        value: builtins.int = self._typed(key, builtins.int, "an integer", False)
        return value

    def opt_int(self, key: builtins.str) -> builtins.int | None:
        value: builtins.int | None = self._typed(key, builtins.int, "an integer", True)
        return value

    def bool(self, key: builtins.str) -> builtins.bool:
        value: builtins.bool = self._typed(key, builtins.bool, "a boolean", False)
        return value

    def opt_bool(self, key: builtins.str) -> builtins.bool | None:
        value: builtins.bool | None = self._typed(key, builtins.bool, "a boolean", True)
        return value

    def str_list(
        self, key: builtins.str, *, default: tuple[builtins.str, ...] | None = None
    ) -> tuple[builtins.str, ...]:
        if key not in self.obj and default is not None:
            return default
        items = self._typed(key, list, "an array", False)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise ParseError(
                    self.source,
                    f"{self.field(key)}[{i}]",
                    f"expected a string, got {type_name(item)}",
                )
        return tuple(items)

    def sub(self, key: builtins.str) -> Reader:
        value = self._typed(key, dict, "an object", False)
        return Reader(self.source, self.field(key), value)

    def opt_sub(self, key: builtins.str) -> Reader | None:
        value = self._typed(key, dict, "an object", True)
        return None if value is None else Reader(self.source, self.field(key), value)

    def items(
        self, key: builtins.str, *, optional: builtins.bool = False
    ) -> list[tuple[builtins.str, Reader]]:
        """The (name, object) entries of a map of objects."""
        value = self._typed(key, dict, "an object", optional)
        if value is None:
            return []
        out = []
        for name, entry in value.items():
            where = f"{self.field(key)}.{name}"
            if not isinstance(entry, dict):
                raise ParseError(self.source, where, f"expected an object, got {type_name(entry)}")
            out.append((name, Reader(self.source, where, entry)))
        return out

    def list_of(self, key: builtins.str, *, optional: builtins.bool = False) -> list[Reader]:
        """The entries of an array of objects."""
        value = self._typed(key, list, "an array", optional)
        if value is None:
            return []
        out = []
        for i, entry in enumerate(value):
            where = f"{self.field(key)}[{i}]"
            if not isinstance(entry, dict):
                raise ParseError(self.source, where, f"expected an object, got {type_name(entry)}")
            out.append(Reader(self.source, where, entry))
        return out

    def one_of(self, key: builtins.str, allowed: tuple[builtins.str, ...]) -> builtins.str:
        value = self.str(key)
        if value not in allowed:
            raise self.fail(key, f"expected one of {', '.join(allowed)}, got {value!r}")
        return value
