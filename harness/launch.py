"""Run a daemon's entry point with a mutant applied inside its own process.

    python -m harness.launch --mutant NAME -- MODULE [ARGS…]

applies `harness.mutants.injected(NAME)`, then imports MODULE (e.g. `nixfleet.cp.main`,
`nixfleet.agent.main`) and exits with `MODULE.main(ARGS)`. The patch is in place before
the daemon's modules are imported, so names they import from the patched module are
the mutant's too. Only the harness starts processes this way; production code never
reads a mutant name. The PID is the daemon's own (no extra process), so signals reach it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .mutants import MUTANTS, injected

PROG = "python -m harness.launch"


def launcher(mutant: str | None) -> list[str]:
    """The argv prefix that runs a module (`… MODULE ARGS`), with `mutant` applied."""
    if mutant is None:
        return [sys.executable, "-m"]
    return [sys.executable, "-m", "harness.launch", "--mutant", mutant, "--"]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} --mutant NAME -- MODULE [ARGS…]",
        description="Run MODULE.main(ARGS) with a mutant applied (harness only).",
    )
    parser.add_argument("--mutant", required=True, choices=sorted(MUTANTS))
    if "--" not in args:
        parser.error("expected `-- MODULE [ARGS…]` after the options")
    cut = args.index("--")
    opts = parser.parse_args(args[:cut])
    rest = args[cut + 1 :]
    if not rest:
        parser.error("no MODULE after `--`")
    name, module_args = rest[0], rest[1:]
    with injected(opts.mutant):
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            parser.error(f"cannot import {name} ({exc})")
        entry = getattr(module, "main", None)
        if not callable(entry):
            parser.error(f"{name} has no main()")
        sys.argv = [name, *module_args]
        status = entry(module_args)
    return int(status or 0)


if __name__ == "__main__":
    raise SystemExit(main())
