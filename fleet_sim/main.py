"""`fleet-sim`: run one simulated fleet, or sweep seeds × parameters.

    fleet-sim run --hosts 1000 --waves 3 --seed 7 \\
        --fault CpWipe:at=600,duration=20 --fault Partition:hosts=0.1,at=300,duration=120
    fleet-sim run --scenario scenarios/cp-wipe.toml --report reports/cp-wipe
    fleet-sim sweep --seeds 1-20 --param hosts=100,500 --param policy=halt,rollback-and-halt
    fleet-sim sweep --seeds 1-100 --scheduler tcp://10.0.0.5:8786

Exit 0 when every checker passes, 1 when one does not, 2 on bad input (one line).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import simpy
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from nixfleet.cli.app import OneLineParser
from nixfleet.cli.app import run as run_cli
from nixfleet.core.errors import ParseError, Unreachable
from nixfleet.core.fleet import HEALTH_FAILURE_POLICIES

from .checkers import passed, run_checkers
from .metrics import WAVE_HEADERS, compute, fmt_secs, series, summary_rows, wave_rows
from .report import (
    COMPACT_SWEEP_HEADERS,
    sweep_rows,
    verdict_word,
    write_run_report,
    write_sweep_report,
)
from .scenario_file import (
    CONFIG_FIELDS,
    Scenario,
    coerce,
    load_scenario,
    parse_fault_flag,
    parse_param,
)
from .sweep import CHECKER_SETS, aggregate, execute, parse_seeds, plan, select_checkers
from .world import World

PROG = "fleet-sim"
SETTING_FLAGS = {
    "hosts": "hosts", "waves": "waves", "policy": "policy", "seed": "seed",
    "duration": "duration", "poll": "poll_secs", "soak_minutes": "soak_minutes",
}  # fmt: skip
"""argparse dest → SimConfig field."""
PROGRESS_EVERY_SECS = 60.0
"""Simulated seconds between progress-bar updates."""


def _setting(field: str) -> Callable[[str], Any]:
    """An argparse type that validates a flag like the scenario file's field."""

    def convert(text: str) -> Any:
        try:
            return coerce(CONFIG_FIELDS[field], text, "flag", field, text=True)
        except ParseError as exc:
            raise argparse.ArgumentTypeError(exc.problem) from None

    convert.__name__ = field
    return convert


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Simulate a NixFleet fleet: rollouts, "
                           "faults and checkers over the production decision code.")  # fmt: skip
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser)

    common = OneLineParser(add_help=False)
    common.add_argument("--scenario", metavar="FILE", help="TOML or JSON scenario file; "
                        "flags override its settings and add to its faults")  # fmt: skip
    common.add_argument("--hosts", type=_setting("hosts"), help="fleet size (default 100)")
    common.add_argument("--waves", type=_setting("waves"), help="rollout waves (default 3)")
    common.add_argument("--policy", choices=HEALTH_FAILURE_POLICIES,
                        help="on health failure (default rollback-and-halt)")  # fmt: skip
    common.add_argument("--duration", type=_setting("duration"), metavar="SECS",
                        help="upper bound of simulated seconds (default 21600)")  # fmt: skip
    common.add_argument("--poll", type=_setting("poll_secs"), metavar="SECS",
                        help="agent poll interval (default 60)")  # fmt: skip
    common.add_argument("--soak-minutes", dest="soak_minutes", type=_setting("soak_minutes"),
                        metavar="N", help="soak between waves (default 0)")  # fmt: skip
    common.add_argument("--fault", action="append", default=[], metavar="KIND:k=v,…",
                        help="add a fault, e.g. CpWipe:at=600,duration=20 or "
                        "Partition:hosts=0.1,at=300,duration=120 "
                        "(repeatable; lists use +)")  # fmt: skip
    common.add_argument("--checkers", choices=CHECKER_SETS, default="default",
                        help="default: any run's invariants; clean: a fault-free release "
                        "converges with every host activated once")  # fmt: skip
    common.add_argument("--report", metavar="DIR", help="report directory")
    common.add_argument("--quiet", "-q", action="store_true",
                        help="print only the verdict and the trace hash")  # fmt: skip

    run = sub.add_parser("run", parents=[common], help="run one simulation",
                         description="Run one simulated fleet and check its history.")  # fmt: skip
    run.add_argument("--seed", type=_setting("seed"), help="RNG seed (default 1)")
    run.add_argument("--no-report", action="store_true", help="write no report directory")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    sweep = sub.add_parser("sweep", parents=[common], help="run many seeds × parameters",
                           description="Run seeds × parameter values on local processes "
                           "or a Dask cluster and aggregate the results.")  # fmt: skip
    sweep.add_argument("--seeds", default="1-10", help="seeds: 1-20, 3, 1,5,9-12 (default 1-10)")
    sweep.add_argument("--param", action="append", default=[], metavar="NAME=V1,V2",
                       help="a swept setting, e.g. hosts=100,500 (repeatable)")  # fmt: skip
    sweep.add_argument("--workers", type=int, default=None,
                       help="local worker processes (default: CPU count)")  # fmt: skip
    sweep.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                       help="run on this Dask distributed scheduler instead")  # fmt: skip
    sweep.set_defaults(func=cmd_sweep)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv, name=PROG)


# --- shared --------------------------------------------------------------------------------


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    scenario = load_scenario(args.scenario) if args.scenario else Scenario()
    overrides = {
        field: getattr(args, dest)
        for dest, field in SETTING_FLAGS.items()
        if getattr(args, dest, None) is not None
    }
    faults = [parse_fault_flag(text) for text in args.fault]
    return scenario.with_config(**overrides).with_faults(faults)


def _cell(value: Any) -> Text:
    return Text(str(value))


def _table(title: str | None, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    for h in headers:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(c) for c in row))
    return table


class SimLogHandler(logging.Handler):
    """The production code's warnings (a halt, a rejected snapshot), one line each,
    stamped with simulated time; through the console so they print above the bar."""

    def __init__(self, console: Console, world: World) -> None:
        super().__init__(logging.WARNING)
        self.console = console
        self.world = world

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage().replace("\n", "\\n")
            line = f"t={float(self.world.env.now):.1f}s {record.levelname.lower()} {msg}"
            self.console.print(Text(line), soft_wrap=True)
        except Exception:
            self.handleError(record)


LOGGERS = ("nixfleet", "fleet_sim")


@contextlib.contextmanager
def _logs(console: Console, world: World, quiet: bool) -> Iterator[None]:
    """Route the simulated daemons' warnings to stderr for one run (none with --quiet)."""
    handler = logging.NullHandler() if quiet else SimLogHandler(console, world)
    for name in LOGGERS:
        logging.getLogger(name).addHandler(handler)
    try:
        yield
    finally:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(handler)


# --- run -----------------------------------------------------------------------------------


def run_world(
    world: World, on_tick: Callable[[World], None] | None = None, every: float = 60.0
) -> World:
    """Run the world; with `on_tick`, call it every `every` simulated seconds.

    The ticker is one more simpy process that only reads the clock: it adds events to
    the queue but never reorders the others, records nothing and draws no randomness,
    so the trace (and its hash) is the same with and without it."""
    if on_tick is not None:

        def ticker() -> Generator[simpy.Event, Any, None]:
            while True:
                yield world.env.timeout(every)
                on_tick(world)

        world.env.process(ticker())
    return world.run()


def _run_with_progress(world: World, console: Console) -> None:
    """A transient bar: hosts on their declared closure, simulated time, events."""
    columns = (
        TextColumn("[bold]simulating[/]"),
        BarColumn(bar_width=24),
        TextColumn("{task.completed:.0f}/{task.total:.0f} hosts on target"),
        TextColumn("· sim {task.fields[sim]} · {task.fields[events]} events"),
        TimeElapsedColumn(),
    )
    targets: dict[int, dict[str, str]] = {}

    def on_target(w: World) -> int:
        want = targets.get(w.generation)
        if want is None:  # once per release, not per tick: closures are hashed
            want = targets[w.generation] = {name: w.target(name) for name in w.hosts}
        return sum(1 for name, h in w.hosts.items() if h.current == want[name])

    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("run", total=len(world.hosts), sim=fmt_secs(0.0), events=0)

        def tick(w: World) -> None:
            progress.update(task, completed=on_target(w), sim=fmt_secs(float(w.env.now)),
                            events=len(w.history.events))  # fmt: skip

        run_world(world, tick, every=max(PROGRESS_EVERY_SECS, world.config.poll_secs))
        tick(world)


def cmd_run(args: argparse.Namespace) -> int:
    scenario = scenario_from_args(args)
    config = scenario.sim_config()
    out = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    world = World(config)
    with _logs(err, world, args.quiet):
        if not args.quiet and not args.no_progress and err.is_terminal:
            _run_with_progress(world, err)
        else:
            run_world(world)
    verdicts = run_checkers(world.as_run(), select_checkers(args.checkers, config))
    metrics = compute(world)
    report = None if args.no_report else Path(args.report or f"reports/sim-{config.seed}")
    if report is not None:
        write_run_report(report, metrics, series(world), verdicts)
    ok = passed(verdicts)

    if not args.quiet:
        title = f"fleet-sim run ({scenario.name})" if scenario.name else "fleet-sim run"
        out.print(_table(title, ("metric", "value"), summary_rows(metrics)))
        out.print(_table("waves", WAVE_HEADERS, wave_rows(metrics)))
        out.print(_table("checkers", ("checker", "verdict", "detail"),
                         [(v.name, verdict_word(v.ok), v.detail) for v in verdicts]))  # fmt: skip
    else:
        for v in verdicts:
            if v.ok is not True:
                out.print(Text(f"{verdict_word(v.ok)} {v.name}: {v.detail}"), soft_wrap=True)
    bad = [v.name for v in verdicts if v.ok is not True]
    out.print(Text(f"result: PASS (all {len(verdicts)} checkers pass)" if ok
                   else f"result: FAIL ({', '.join(bad)})"), soft_wrap=True)  # fmt: skip
    out.print(Text(f"trace hash: {metrics['trace_hash']}"), soft_wrap=True)
    if report is not None and not args.quiet:
        out.print(Text(f"report: {report / 'summary.html'}"), soft_wrap=True)
    return 0 if ok else 1


# --- sweep ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _executor(scheduler: str | None, workers: int | None) -> Iterator[Executor]:
    """A local process pool, or a Dask distributed cluster's executor."""
    if scheduler is None:
        if workers is not None and workers < 1:
            raise ParseError("--workers", "", f"must be ≥ 1, got {workers}")
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1,
                                 mp_context=context) as pool:  # fmt: skip
            yield pool
        return
    from distributed import Client  # only sweeps on a cluster need it

    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise Unreachable(f"sweep: no Dask scheduler at {scheduler} ({exc})") from None
    try:
        with client.get_executor(pure=False) as executor:
            yield executor
    finally:
        client.close()


def cmd_sweep(args: argparse.Namespace) -> int:
    scenario = scenario_from_args(args)
    seeds = parse_seeds(args.seeds)
    params = [parse_param(text) for text in args.param]
    names = [name for name, _ in params]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ParseError("--param", twice[0], "swept twice; give its values in one --param")
    if "seed" in names:
        raise ParseError("--param", "seed", "use --seeds to sweep seeds")
    tasks = plan(scenario, seeds, params, args.checkers)
    for task in tasks[:: len(seeds)]:  # every combination builds (fault hosts exist, …)
        Scenario(config=task.config, faults=task.faults, source=task.source).sim_config()

    out = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    where = args.scheduler or f"{args.workers or os.cpu_count() or 1} local processes"
    with _executor(args.scheduler, args.workers) as executor:
        if not args.quiet and err.is_terminal:
            with Progress(TextColumn(f"[bold]sweep[/] on {where}"), BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                          transient=True) as progress:  # fmt: skip
                bar = progress.add_task("sweep", total=len(tasks))
                results = execute(tasks, executor, lambda _r: progress.advance(bar))
        else:
            results = execute(tasks, executor)
    agg = aggregate(results, params, seeds, base=scenario.config, faults=scenario.faults,
                    checkers=args.checkers)  # fmt: skip
    report = Path(args.report or "reports/sweep")
    write_sweep_report(report, agg)

    ok = agg["passed"] == agg["runs"]
    if not args.quiet:
        out.print(_table(f"fleet-sim sweep: {len(seeds)} seeds × {len(tasks) // len(seeds)} "
                         f"combinations on {where}", COMPACT_SWEEP_HEADERS,
                         sweep_rows(agg, compact=True)))  # fmt: skip
    out.print(Text(f"result: {'PASS' if ok else 'FAIL'} ({agg['passed']} of {agg['runs']} "
                   "runs pass every checker)"), soft_wrap=True)  # fmt: skip
    if not args.quiet:
        out.print(Text(f"report: {report / 'sweep.md'}"), soft_wrap=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
