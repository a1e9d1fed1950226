"""`fleet-harness`: list, run and prove the scenario catalogue.

    fleet-harness list
    fleet-harness run [ID …] [--backend sim] [--report DIR]
    fleet-harness prove [ID …] [--backend sim] [--report DIR]

`prove` runs each scenario without and with its mutant (the bug put back): it must
pass, then fail. Exit 0 when every selected scenario passes (run) or is proven
(prove), 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from nixfleet.cli.app import OneLineParser, run
from nixfleet.core.errors import BadInput

from .scenario import Outcome, Proof, Scenario, prove, run_sim

BACKENDS = ("sim",)
"""Backends this build can drive; the local, ssh, qemu and tpm backends are not built."""


def _select(ids: Sequence[str], backend: str) -> list[Scenario]:
    from scenarios import CATALOGUE, by_id

    if backend not in BACKENDS:
        raise BadInput(
            f"--backend {backend}: not available here (available: {', '.join(BACKENDS)})"
        )
    chosen = []
    for scenario_id in ids:
        found = by_id(scenario_id)
        if found is None:
            raise BadInput(f"unknown scenario {scenario_id!r} (see `fleet-harness list`)")
        chosen.append(found)
    chosen = chosen or list(CATALOGUE)
    refused = [s.id for s in chosen if backend not in s.backends]
    if refused:
        raise BadInput(f"scenarios not runnable on {backend}: {', '.join(refused)}")
    return chosen


def _verdict_lines(outcome: Outcome) -> list[str]:
    marks = {True: "pass", False: "FAIL", None: "unknown"}
    return [f"| {v.name} | {marks[v.ok]} | {v.detail} |" for v in outcome.verdicts]


def _report_dir(path: Path | None) -> None:
    """Create the report directory before running anything, so a bad path costs no run."""
    if path is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInput(f"--report: cannot create {path} ({exc.strerror})") from exc


def _report(path: Path | None, title: str, lines: list[str]) -> None:
    text = "\n".join([f"# {title}", "", *lines, ""])
    if path is not None:
        try:
            (path / "catalogue.md").write_text(text)
        except OSError as exc:
            raise BadInput(
                f"--report: cannot write {path / 'catalogue.md'} ({exc.strerror})"
            ) from exc


def _cmd_list(args: argparse.Namespace) -> int:
    from scenarios import CATALOGUE

    for s in CATALOGUE:
        mutant = s.mutant or "-"
        print(f"{s.id:<38} {','.join(sorted(s.backends)):<6} mutant={mutant}\n    {s.source}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    scenarios = _select(args.ids, args.backend)
    _report_dir(args.report)
    lines = ["| scenario | result | wall s | sim s | events |", "|---|---|---|---|---|"]
    details: list[str] = []
    ok = True
    for s in scenarios:
        outcome = run_sim(s)
        ok &= outcome.passed
        status = "pass" if outcome.passed else "FAIL"
        print(
            f"{status:<5} {s.id:<38} {outcome.wall_secs:6.1f} s wall  "
            f"{outcome.sim_secs:7.0f} s sim  {outcome.events:>7} events",
            flush=True,
        )
        lines.append(
            f"| {s.id} | {status} | {outcome.wall_secs:.1f} | {outcome.sim_secs:.0f} "
            f"| {outcome.events} |"
        )
        details += [
            "",
            f"## {s.id}",
            "",
            s.summary,
            "",
            f"Source: {s.source}",
            "",
            "| checker | verdict | detail |",
            "|---|---|---|",
            *_verdict_lines(outcome),
        ]
    _report(args.report, "Scenario catalogue (sim backend)", [*lines, *details])
    return 0 if ok else 1


def _cmd_prove(args: argparse.Namespace) -> int:
    scenarios = _select(args.ids, args.backend)
    _report_dir(args.report)
    lines = [
        "Each scenario runs on the production cores and the real CP service; "
        "`prove` runs it as shipped (must pass) and with its bug put back (must fail).",
        "",
        "| scenario | as shipped | with the bug | proven | source |",
        "|---|---|---|---|---|",
    ]
    details: list[str] = []
    all_proven = True
    for s in scenarios:
        proof: Proof = prove(s)
        all_proven &= proof.proven
        fixed = "pass" if proof.fixed.passed else "FAIL"
        buggy = "-" if proof.buggy is None else ("fails" if not proof.buggy.passed else "PASSES")
        verdict = "yes" if proof.proven else "NO"
        print(
            f"{verdict:<4} {s.id:<38} shipped: {fixed:<4}  with {s.mutant or 'no mutant'}: {buggy}",
            flush=True,
        )
        lines.append(f"| {s.id} | {fixed} | {buggy} | {verdict} | {s.source} |")
        details += [
            "",
            f"## {s.id}",
            "",
            s.summary,
            "",
            "As shipped:",
            "",
            "| checker | verdict | detail |",
            "|---|---|---|",
            *_verdict_lines(proof.fixed),
        ]
        if proof.buggy is not None:
            details += [
                "",
                f"With mutant `{s.mutant}`:",
                "",
                "| checker | verdict | detail |",
                "|---|---|---|",
                *_verdict_lines(proof.buggy),
            ]
    _report(args.report, "Scenario catalogue: proofs (sim backend)", [*lines, *details])
    if args.report is not None:
        print(f"report: {args.report / 'catalogue.md'}")
    return 0 if all_proven else 1


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="fleet-harness", description="NixFleet scenario harness")
    sub = parser.add_subparsers(metavar="COMMAND", parser_class=OneLineParser)
    listing = sub.add_parser("list", help="list the scenario catalogue")
    listing.set_defaults(func=_cmd_list)
    for name, func, text in (
        ("run", _cmd_run, "run scenarios"),
        ("prove", _cmd_prove, "run scenarios with and without their bug"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("ids", nargs="*", help="scenario ids (default: the whole catalogue)")
        p.add_argument("--backend", default="sim", help="where to run (default: sim)")
        p.add_argument("--report", type=Path, help="write a markdown report into DIR")
        p.set_defaults(func=func)
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
