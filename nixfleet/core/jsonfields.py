"""Typed reads from parsed JSON that fail with a ParseError naming source and field.

Records parse with a `Reader` bound to a source name (a file path or `checkin body`)
and a dotted field path, so every error points at one field:
`fleet.json: hosts.h1.channel: expected a string, got 3`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ParseError

_MISSING: Any = object()


def _type_name(value: object) -> str:
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

    source: str
    path: str
    obj: Mapping[str, Any]

    @classmethod
    def root(cls, value: Any, source: str) -> Reader:
        if not isinstance(value, dict):
            raise ParseError(source, "", f"expected a JSON object, got {_type_name(value)}")
        return cls(source, "", value)

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, problem: str) -> ParseError:
        return ParseError(self.source, self.field(key), problem)

    def has(self, key: str) -> bool:
        return key in self.obj

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        if key not in self.obj:
            if default is _MISSING:
                raise self.fail(key, "missing")
            return default
        return self.obj[key]

    def _typed(self, key: str, kind: type | tuple[type, ...], what: str, optional: bool) -> Any:
        if key not in self.obj or (optional and self.obj[key] is None):
            if optional:
                return None
            raise self.fail(key, "missing")
        value = self.obj[key]
        if isinstance(value, bool) and kind is not bool:
            raise self.fail(key, f"expected {what}, got a boolean")
        if not isinstance(value, kind):
            raise self.fail(key, f"expected {what}, got {_type_name(value)}")
        return value

    def str(self, key: str) -> str:
        value: str = self._typed(key, str, "a string", False)
        return value

    def opt_str(self, key: str) -> str | None:
        value: str | None = self._typed(key, str, "a string", True)
        return value

    def int(self, key: str) -> int:
        value: int = self._typed(key, int, "an integer", False)
        return value

    def opt_int(self, key: str) -> int | None:
        value: int | None = self._typed(key, int, "an integer", True)
        return value

    def bool(self, key: str) -> bool:
        value: bool = self._typed(key, bool, "a boolean", False)
        return value

    def opt_bool(self, key: str) -> bool | None:
        value: bool | None = self._typed(key, bool, "a boolean", True)
        return value

    def str_list(self, key: str, *, default: tuple[str, ...] | None = None) -> tuple[str, ...]:
        if key not in self.obj and default is not None:
            return default
        items = self._typed(key, list, "an array", False)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise ParseError(
                    self.source, f"{self.field(key)}[{i}]", f"expected a string, got {_type_name(item)}"
                )
        return tuple(items)

    def sub(self, key: str) -> Reader:
        value = self._typed(key, dict, "an object", False)
        return Reader(self.source, self.field(key), value)

    def opt_sub(self, key: str) -> Reader | None:
        value = self._typed(key, dict, "an object", True)
        return None if value is None else Reader(self.source, self.field(key), value)

    def items(self, key: str, *, optional: bool = False) -> list[tuple[str, Reader]]:
        """The (name, object) entries of a map of objects."""
        value = self._typed(key, dict, "an object", optional)
        if value is None:
            return []
        out = []
        for name, entry in value.items():
            where = f"{self.field(key)}.{name}"
            if not isinstance(entry, dict):
                raise ParseError(self.source, where, f"expected an object, got {_type_name(entry)}")
            out.append((name, Reader(self.source, where, entry)))
        return out

    def list_of(self, key: str, *, optional: bool = False) -> list[Reader]:
        """The entries of an array of objects."""
        value = self._typed(key, list, "an array", optional)
        if value is None:
            return []
        out = []
        for i, entry in enumerate(value):
            where = f"{self.field(key)}[{i}]"
            if not isinstance(entry, dict):
                raise ParseError(self.source, where, f"expected an object, got {_type_name(entry)}")
            out.append(Reader(self.source, where, entry))
        return out

    def one_of(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self.str(key)
        if value not in allowed:
            raise self.fail(key, f"expected one of {', '.join(allowed)}, got {value!r}")
        return value
