"""`fleet-harness`: list, run and prove the scenario catalogue on one or more backends.

    fleet-harness list [--markdown] [--update README.md]
    fleet-harness run [ID …] --backend B [--backend B …] [--report DIR] [--tcti TCTI]
                      [--inventory FILE]
    fleet-harness prove (ID … | --all) --backend B [--backend B …] [--report DIR] [--tcti TCTI]
                      [--inventory FILE]
    fleet-harness report DIR

`prove` runs each (scenario, backend) as shipped (it must pass) and with its mutant (the
bug put back: it must fail), through `runner.prove`, as the pytest items do. With
`--report DIR` each pair's result is saved as `DIR/results/<id>@<backend>.json` and
`DIR/catalogue.md` + `.html` are rendered from every result the directory holds (one
column per backend); `report DIR` re-renders them. Exit 0 when every selected pair
passes (run) or is proven (prove), 1 otherwise, 2 on bad input (checked before
anything runs).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import scenarios
from nixfleet.cli.app import OneLineParser, run
from nixfleet.core.errors import BadInput

from . import report, runner
from .fleet import Scenario


def _backends(names: Sequence[str]) -> list[str]:
    for name in names:
        if name in runner.WAITING:
            raise BadInput(f"--backend {name}: not built yet (waits for {runner.WAITING[name]})")
        if name not in runner.BACKENDS:
            built = ", ".join(runner.BACKENDS)
            raise BadInput(f"--backend {name}: unknown backend (built: {built})")
    return list(dict.fromkeys(names))


def _pairs(args: argparse.Namespace) -> list[tuple[Scenario, str]]:
    """The selected (scenario, backend) pairs. Named scenarios must list every requested
    backend; the whole catalogue takes each scenario on the backends it lists."""
    backends = _backends(args.backend)
    if args.ids and args.all:
        raise BadInput(f"{args.command}: name scenario ids or --all, not both")
    if not args.ids and not args.all and args.command == "prove":
        raise BadInput("prove: name scenario ids or --all")
    chosen = []
    for sid in args.ids:
        found = scenarios.by_id(sid)
        if found is None:
            raise BadInput(f"unknown scenario {sid!r} (see `fleet-harness list`)")
        missing = [b for b in backends if b not in found.runs_on]
        if missing:
            why = "; ".join(f"{b}: {where(found, b)}" for b in missing)
            raise BadInput(f"scenario {sid} does not run on {', '.join(missing)} ({why})")
        chosen.append(found)
    pool = chosen or scenarios.CATALOGUE
    return [(s, b) for b in backends for s in pool if b in s.runs_on]


def where(scenario: Scenario, backend: str) -> str:
    """Why `scenario` does not run on `backend` here."""
    if backend in scenario.waiting:
        return scenario.waiting[backend]
    if backend not in scenario.backends:
        return "the catalogue does not list it"
    return runner.WAITING.get(backend, "not planned")


def _attempt(scenario: Scenario, backend: str, proving: bool) -> report.Result:
    """One pair; a backend that cannot run here or a crash is a failed result, not the
    end of the catalogue."""
    started = time.perf_counter()
    fixed = buggy = None
    error = None
    try:
        if proving:
            proof = runner.prove(scenario, backend)
            fixed, buggy = proof.fixed, proof.buggy
        else:
            fixed = runner.run(scenario, backend)
    except runner.BackendUnavailable as exc:
        error = f"backend {backend} unavailable here: {exc}"
    except Exception as exc:
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"
    return report.result(
        scenario,
        backend,
        proving=proving,
        wall_secs=time.perf_counter() - started,
        fixed=fixed,
        buggy=buggy,
        error=error,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    pairs = _pairs(args)
    if args.tcti is not None:
        # The tpm backend reads its TPM from the environment (so pytest items can too).
        from .backends.tpm import TCTI_ENV

        os.environ[TCTI_ENV] = args.tcti
    if args.inventory is not None:
        # The ssh backend reads its inventory from the environment too; checked first.
        from .backends.ssh import INVENTORY_ENV
        from .inventory import load

        load(args.inventory)
        os.environ[INVENTORY_ENV] = str(args.inventory.resolve())
    if args.report is not None:
        report.prepare(args.report)
    ok = True
    for scenario, backend in pairs:
        res = _attempt(scenario, backend, proving=args.command == "prove")
        ok &= res.status.ok
        print(f"{res.label:<26} {res.name:<48} {res.wall_secs:7.1f} s", flush=True)
        if res.fixed is not None and res.fixed.ran_on:
            print(f"    ran on {', '.join(res.fixed.ran_on)}")
        if not res.status.ok:
            print("\n".join("    " + line for line in report.explain(res).splitlines()[1:]))
        if args.report is not None:
            report.save(args.report, res)
    if args.report is not None:
        for path in report.render(args.report):
            print(f"report: {path}")
    return 0 if ok else 1


def _cmd_report(args: argparse.Namespace) -> int:
    for path in report.render(args.dir):
        print(f"report: {path}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    # The Markdown table documents the project (the README's), so it lists the built
    # backends each entry runs on, whatever this machine has.
    rows = [_listing(s, machine=not args.markdown) for s in scenarios.CATALOGUE]
    if args.update is not None:
        report.update_readme(args.update, report.catalogue_markdown(rows))
        print(f"updated the catalogue table in {args.update}")
    elif args.markdown:
        print(report.catalogue_markdown(rows))
    else:
        for row in rows:
            print(row.id)
            print(f"    source:   {row.source}")
            print(f"    mutant:   {row.mutant or '-'}")
            print(f"    here:     {', '.join(row.here) or '-'}")
            if row.broken:
                print(f"    not here: {', '.join(row.broken)}")
            print(f"    waiting:  {', '.join(row.waiting) or '-'}")
    counts = report.listing_counts(rows)
    print(
        f"\n{counts.total} entries: {counts.runnable} run here "
        f"({counts.guarded} of them against a mutant), {counts.waiting} wait",
        file=sys.stderr if args.markdown or args.update else sys.stdout,
    )
    return 0


def _listing(s: Scenario, *, machine: bool) -> report.Listing:
    built = [b for b in runner.BACKENDS if b in s.runs_on]
    here = [b for b in built if not machine or _why(b) is None]
    return report.Listing(
        id=s.id,
        source=s.source,
        mutant=s.mutant,
        here=here,
        broken=[f"{b} ({_why(b)})" for b in built if b not in here],
        waiting=[f"{b} ({where(s, b)})" for b in sorted(s.backends - set(built))],
    )


def _why(backend: str) -> str | None:
    return runner.unavailable(backend)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="fleet-harness", description="NixFleet scenario harness")
    sub = parser.add_subparsers(metavar="COMMAND", dest="command", parser_class=OneLineParser)
    listing = sub.add_parser("list", help="the catalogue and where each scenario runs")
    listing.add_argument(
        "--markdown", action="store_true", help="one Markdown table (the README's catalogue)"
    )
    listing.add_argument(
        "--update",
        type=Path,
        metavar="FILE",
        help="rewrite the table between FILE's catalogue markers (the README)",
    )
    listing.set_defaults(func=_cmd_list)
    for name, text in (
        ("run", "run scenarios (default: the whole catalogue)"),
        ("prove", "run scenarios as shipped and with their bug put back"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("ids", nargs="*", help="scenario ids")
        p.add_argument("--all", action="store_true", help="the whole catalogue")
        p.add_argument(
            "--backend", action="append", required=True, help="sim, local, … (repeatable)"
        )
        p.add_argument("--report", type=Path, help="save results and the report into DIR")
        p.add_argument(
            "--tcti",
            metavar="TCTI",
            help="the tpm backend's TPM, e.g. device:/dev/tpmrm0 (default: a swtpm it starts)",
        )
        p.add_argument(
            "--inventory",
            type=Path,
            metavar="FILE",
            help="the ssh backend's hosts (TOML; default: two private sshd hosts it starts)",
        )
        p.set_defaults(func=_cmd_run)
    rep = sub.add_parser("report", help="re-render DIR's report from its saved results")
    rep.add_argument("dir", type=Path)
    rep.set_defaults(func=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # The production code's warnings (halts, health failures) belong in the report,
    # not on the console of a catalogue run.
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.ERROR)
    return run(build_parser(), argv, name="fleet-harness")


if __name__ == "__main__":
    raise SystemExit(main())
