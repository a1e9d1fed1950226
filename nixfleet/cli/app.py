"""The shell every console script shares: one-line errors, exit codes, no tracebacks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from nixfleet.core.errors import NixfleetError

Handler = Callable[[argparse.Namespace], int]


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message}\n")
        raise SystemExit(2)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None, *, name: str) -> int:
    """Parse, dispatch to `args.func`, turn every NixfleetError into one line."""
    args = parser.parse_args(argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_usage(sys.stderr)
        return 2
    try:
        return func(args)
    except NixfleetError as exc:
        sys.stderr.write(f"{name}: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141


def not_built(name: str, issue: str) -> int:
    sys.stderr.write(f"{name}: not built yet ({issue})\n")
    return 2
