"""`nixfleet`: the operator CLI."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from types import ModuleType

from nixfleet import __version__

from . import app


def build_parser() -> argparse.ArgumentParser:
    parser = app.OneLineParser(prog="nixfleet", description="NixFleet operator CLI")
    parser.add_argument("--version", action="version", version=f"nixfleet {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND", parser_class=app.OneLineParser)
    for module in _commands():
        module.register(sub)
    return parser


def _commands() -> list[ModuleType]:
    # Each module exposes register(subparsers).
    from . import commands

    return commands.ALL


def main(argv: Sequence[str] | None = None) -> int:
    return app.run(build_parser(), argv, name="nixfleet")


if __name__ == "__main__":
    raise SystemExit(main())
