"""The registry of `nixfleet` subcommand modules."""

from __future__ import annotations

ALL: list = []  # type: ignore[type-arg]
