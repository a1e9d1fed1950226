"""Results of the catalogue per (scenario, backend): judged, explained, saved as JSON,
rendered as one markdown and one HTML report with a column per backend.

`fleet-harness` saves one `results/<id>@<backend>.json` per pair (plus each run's
history as text) and renders the report from whatever results the directory holds, so
runs on different backends into one directory make one table, and `fleet-harness
report DIR` re-renders it. The pytest items judge and explain with the same code.
"""

from __future__ import annotations

import dataclasses
import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

from nixfleet.core.errors import BadInput

from .fleet import Scenario, Verdict
from .runner import BACKENDS, WAITING, Outcome

RESULTS = "results"
REPORT = "catalogue"
"""`DIR/results/*.json`, `DIR/catalogue.md`, `DIR/catalogue.html`."""


class Status(Enum):
    PROVEN = "proven"
    PASSES = "passes"
    NOT_CAUGHT = "passes, mutant not caught"
    FAILS = "fails"

    @property
    def ok(self) -> bool:
        return self in (Status.PROVEN, Status.PASSES)


@dataclass(frozen=True, kw_only=True)
class Result:
    """One (scenario, backend): a run (`buggy` None) or a proof, or why neither ran."""

    scenario: str
    source: str
    summary: str
    backend: str
    mutant: str | None
    proving: bool
    fixed: Outcome | None
    buggy: Outcome | None
    error: str | None
    """Why the pair could not run (backend unavailable here, the harness crashed)."""
    wall_secs: float
    finished_at: str

    @property
    def name(self) -> str:
        return f"{self.scenario}@{self.backend}"

    @property
    def status(self) -> Status:
        if self.error is not None or self.fixed is None or not self.fixed.passed:
            return Status.FAILS
        if not self.proving or self.buggy is None:
            return Status.PASSES
        return Status.NOT_CAUGHT if self.buggy.passed else Status.PROVEN

    @property
    def label(self) -> str:
        if self.status is Status.PASSES and self.proving:
            return "passes (no mutant)"
        return self.status.value


def result(
    scenario: Scenario,
    backend: str,
    *,
    proving: bool,
    wall_secs: float,
    fixed: Outcome | None = None,
    buggy: Outcome | None = None,
    error: str | None = None,
) -> Result:
    return Result(
        scenario=scenario.id,
        source=scenario.source,
        summary=scenario.summary,
        backend=backend,
        mutant=scenario.mutant,
        proving=proving,
        fixed=fixed,
        buggy=buggy,
        error=error,
        wall_secs=wall_secs,
        finished_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


# --- explaining --------------------------------------------------------------------------

MARKS = {True: "pass", False: "FAIL", None: "unknown"}


def _failing(verdicts: Sequence[Verdict]) -> list[Verdict]:
    return [v for v in verdicts if v.ok is not True]


def explain(res: Result) -> str:
    """What went wrong, readable: which verdicts failed in which run."""
    lines = [f"{res.name}: {res.label}"]
    if res.error is not None:
        return "\n".join([*lines, f"  could not run: {res.error}"])
    if res.fixed is not None and not res.fixed.passed:
        lines.append("  as shipped: failed")
        lines += [f"    {MARKS[v.ok]} {v.name}: {v.detail}" for v in _failing(res.fixed.verdicts)]
    if res.buggy is not None:
        if res.buggy.passed:
            names = ", ".join(v.name for v in res.buggy.verdicts)
            lines.append(f"  with mutant {res.mutant}: every checker passed ({names})")
        else:
            failed = ", ".join(v.name for v in _failing(res.buggy.verdicts))
            lines.append(f"  with mutant {res.mutant}: failed, as it must ({failed})")
    return "\n".join(lines)


# --- saving ------------------------------------------------------------------------------


def prepare(directory: Path) -> None:
    """Make sure results can be written into `directory`, before anything runs."""
    where = directory / RESULTS
    probe = where / ".write-test"
    try:
        where.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise BadInput(f"--report: cannot write into {directory} ({exc.strerror})") from exc


def _outcome_json(outcome: Outcome | None) -> dict[str, Any] | None:
    if outcome is None:
        return None
    record = dataclasses.asdict(outcome)
    del record["history"]  # saved next to it as text
    return record


def _history(res: Result, run: str) -> str:
    return f"{res.name}.{run}.history"


def save(directory: Path, res: Result) -> None:
    where = directory / RESULTS
    record = dataclasses.asdict(res)
    record["fixed"], record["buggy"] = _outcome_json(res.fixed), _outcome_json(res.buggy)
    (where / f"{res.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    for run, outcome in (("fixed", res.fixed), ("mutant", res.buggy)):
        if outcome is not None:
            (where / _history(res, run)).write_text(
                "".join(f"{line}\n" for line in outcome.history)
            )


def _outcome(record: dict[str, Any] | None) -> Outcome | None:
    if record is None:
        return None
    verdicts = [Verdict(**v) for v in record.pop("verdicts")]
    return Outcome(**record, verdicts=verdicts)


def load(directory: Path) -> list[Result]:
    files = sorted((directory / RESULTS).glob("*.json"))
    if not files:
        raise BadInput(f"report: no saved results in {directory / RESULTS}")
    results = []
    for path in files:
        try:
            record = json.loads(path.read_text())
            record["fixed"], record["buggy"] = _outcome(record["fixed"]), _outcome(record["buggy"])
            results.append(Result(**record))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise BadInput(f"report: cannot read {path} ({exc})") from exc
    return results


# --- rendering ---------------------------------------------------------------------------

Block = tuple[str, Any]
"""("h1"|"h2"|"p", text) or ("table", (header, rows))."""


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> Block:
    return ("table", (list(header), [list(r) for r in rows]))


def _run_blocks(title: str, outcome: Outcome, history: str) -> list[Block]:
    verdict = "passed" if outcome.passed else "failed"
    return [
        (
            "p",
            f"{title}: {verdict} in {outcome.wall_secs:.1f} s wall, "
            f"{outcome.fleet_secs:.0f} s on the fleet's clock, {outcome.events} events "
            f"({RESULTS}/{history}), trace {outcome.trace_hash[:16]}"
            + (f"; ran on {', '.join(outcome.ran_on)}" if outcome.ran_on else ""),
        ),
        _table(
            ["checker", "verdict", "detail"],
            ([v.name, MARKS[v.ok], v.detail] for v in outcome.verdicts),
        ),
    ]


def _columns(results: Sequence[Result]) -> list[str]:
    present = {r.backend for r in results}
    return [b for b in BACKENDS if b in present] + sorted(present - set(BACKENDS))


def _rows(results: Sequence[Result]) -> list[str]:
    from scenarios import CATALOGUE

    order = {s.id: i for i, s in enumerate(CATALOGUE)}
    ids = {r.scenario for r in results}
    return sorted(ids, key=lambda i: (order.get(i, len(order)), i))


def document(results: Sequence[Result]) -> list[Block]:
    backends, ids = _columns(results), _rows(results)
    by_pair = {(r.scenario, r.backend): r for r in results}
    source = {r.scenario: r.source for r in results}

    def cell(sid: str, backend: str) -> str:
        res = by_pair.get((sid, backend))
        return "not run" if res is None else f"{res.label}, {res.wall_secs:.1f} s"

    totals = [f"{sum(r.wall_secs for r in results if r.backend == b):.1f} s" for b in backends]
    blocks: list[Block] = [
        ("h1", "Scenario catalogue"),
        (
            "p",
            "Each scenario runs as shipped (it must pass) and with its bug put back (it must "
            "fail): proven, passes but mutant not caught, fails, or not run; wall time of "
            "both runs.",
        ),
        _table(
            ["scenario", *backends, "source"],
            [
                *([sid, *(cell(sid, b) for b in backends), source[sid]] for sid in ids),
                ["total wall time", *totals, ""],
            ],
        ),
    ]
    if WAITING:
        waiting = "; ".join(f"{name}: {why}" for name, why in WAITING.items())
        blocks.append(("p", f"Backends not built yet: {waiting}."))
    for sid in ids:
        for backend in backends:
            res = by_pair.get((sid, backend))
            if res is None:
                continue
            blocks += [
                ("h2", f"{res.name}: {res.label}"),
                ("p", f"{res.summary}. Source: {res.source}. Finished {res.finished_at}."),
            ]
            if res.error is not None:
                blocks.append(("p", f"Could not run: {res.error}"))
            if res.fixed is not None:
                blocks += _run_blocks("As shipped", res.fixed, _history(res, "fixed"))
            if res.buggy is not None:
                blocks += _run_blocks(
                    f"With mutant {res.mutant}", res.buggy, _history(res, "mutant")
                )
    return blocks


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for kind, body in blocks:
        if kind == "table":
            header, rows = body
            out += [
                "| " + " | ".join(map(_md_cell, header)) + " |",
                "|" + "---|" * len(header),
                *("| " + " | ".join(map(_md_cell, row)) + " |" for row in rows),
            ]
        else:
            out.append({"h1": "# ", "h2": "## ", "p": ""}[kind] + body)
        out.append("")
    return "\n".join(out)


STYLE = (
    "body{font-family:sans-serif;max-width:75em;margin:2em auto}"
    "table{border-collapse:collapse;margin-bottom:1em}"
    "td,th{border:1px solid #bbb;padding:.2em .5em;text-align:left}"
)


def html_page(blocks: Sequence[Block]) -> str:
    out = [
        '<!doctype html><html><head><meta charset="utf-8"><title>Scenario catalogue</title>',
        f"<style>{STYLE}</style></head><body>",
    ]
    for kind, body in blocks:
        if kind == "table":
            header, rows = body
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header))
            out += [
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                for row in rows
            ]
            out.append("</table>")
        else:
            out.append(f"<{kind}>{html.escape(body)}</{kind}>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render(directory: Path) -> list[Path]:
    """Write the markdown and HTML reports from the results saved in `directory`."""
    blocks = document(load(directory))
    written = [directory / f"{REPORT}.md", directory / f"{REPORT}.html"]
    written[0].write_text(markdown(blocks))
    written[1].write_text(html_page(blocks))
    return written


# --- the catalogue listing (`fleet-harness list`) ----------------------------------------


@dataclass(frozen=True, kw_only=True)
class Listing:
    """Where one entry runs on this machine and what the rest waits for."""

    id: str
    source: str
    mutant: str | None
    here: Sequence[str]
    broken: Sequence[str]
    """Built backends it runs on that cannot run on this machine, with why."""
    waiting: Sequence[str]
    """Listed backends it does not run on here, each with its reason."""


@dataclass(frozen=True)
class ListingCounts:
    total: int
    runnable: int
    guarded: int
    waiting: int


def listing_counts(rows: Sequence[Listing]) -> ListingCounts:
    runnable = [r for r in rows if r.here]
    return ListingCounts(
        total=len(rows),
        runnable=len(runnable),
        guarded=sum(1 for r in runnable if r.mutant),
        waiting=len(rows) - len(runnable),
    )


def catalogue_markdown(rows: Sequence[Listing]) -> str:
    """The README's catalogue table, generated from the scenario modules."""
    lines = [
        "| id | source | runs here | mutant | waiting for |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            f"`{r.id}`",
            r.source,
            ", ".join(r.here) or "-",
            f"`{r.mutant}`" if r.mutant else "-",
            "; ".join(r.waiting) or "-",
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


BEGIN_MARK = "<!-- catalogue table: fleet-harness list --update README.md -->"
END_MARK = "<!-- end of catalogue table -->"


def update_readme(path: Path, table: str) -> None:
    """Replace the text between the catalogue markers of `path` with `table`."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    head, begin, rest = text.partition(BEGIN_MARK)
    _old, end, tail = rest.partition(END_MARK)
    if not begin or not end:
        raise BadInput(f"{path} has no catalogue markers ({BEGIN_MARK} … {END_MARK})")
    path.write_text(f"{head}{BEGIN_MARK}\n{table}\n{END_MARK}{tail}")


def readme_table(text: str) -> str | None:
    """The table between the catalogue markers of a README's text."""
    _head, begin, rest = text.partition(BEGIN_MARK)
    table, end, _tail = rest.partition(END_MARK)
    return table.strip() if begin and end else None
