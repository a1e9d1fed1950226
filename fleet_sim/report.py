"""Reports: a run's directory (metrics.json, summary.md, summary.html, plots) and a
sweep's (sweep.json, sweep.md).

Everything written is a function of the run: no wall-clock time, sorted keys, PNGs
saved without the software tag, so the same (scenario, seed) writes the same bytes.
Plots use matplotlib's object API on the Agg canvas: no display, no pyplot state.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure

from nixfleet.core.errors import BadInput

from .checkers import Verdict
from .metrics import (
    WAVE_HEADERS,
    Series,
    fault_label,
    fmt_secs,
    summary_rows,
    wave_rows,
)

PLOTS = {
    "converged.png": "Hosts on the declared closure over time, per wave",
    "rates.png": "Dispatches, confirms and rollbacks per simulated minute",
    "latency.png": "Check-in latency distribution",
}
PNG_METADATA: dict[str, str | None] = {"Software": None}
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def verdict_word(ok: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "unknown"}[ok]


def _verdicts(verdicts: Sequence[Verdict | Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for v in verdicts:
        if isinstance(v, Verdict):
            out.append({"name": v.name, "ok": v.ok, "detail": v.detail})
        else:
            out.append({"name": v["name"], "ok": v["ok"], "detail": v["detail"]})
    return out


def _write(path: Path, data: str | bytes) -> None:
    try:
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"report: cannot write {path} ({exc.strerror or exc})") from None


def _mkdir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"report: cannot create {out} ({exc.strerror or exc})") from None


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str) + "\n"


# --- a run ---------------------------------------------------------------------------------


def write_run_report(
    out: Path, metrics: Mapping[str, Any], series: Series, verdicts: Sequence[Verdict]
) -> list[Path]:
    """Write metrics.json, summary.md, summary.html and the plots into `out`."""
    _mkdir(out)
    vs = _verdicts(verdicts)
    ok = all(v["ok"] is True for v in vs)
    doc = {**metrics, "verdicts": vs, "passed": ok}
    files = []
    for name, data in (
        ("metrics.json", dump_json(doc)),
        ("summary.md", render_markdown(metrics, vs)),
        ("summary.html", render_html(metrics, vs)),
    ):
        _write(out / name, data)
        files.append(out / name)
    for name, fig in (
        ("converged.png", plot_converged(series)),
        ("rates.png", plot_rates(series)),
        ("latency.png", plot_latency(series)),
    ):
        try:
            fig.savefig(out / name, format="png", metadata=PNG_METADATA)
        except OSError as exc:
            raise BadInput(f"report: cannot write {out / name} ({exc.strerror or exc})") from None
        files.append(out / name)
    return files


def _title(m: Mapping[str, Any]) -> str:
    cfg = m["config"]
    return (f"fleet-sim run: {m['hosts']} hosts, {m['waves']} waves, {cfg['policy']}, "
            f"seed {cfg['seed']}")  # fmt: skip


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def _result_line(vs: Sequence[Mapping[str, Any]]) -> str:
    bad = [v["name"] for v in vs if v["ok"] is not True]
    if not bad:
        return f"PASS: all {len(vs)} checkers pass"
    return f"FAIL: {len(bad)} of {len(vs)} checkers did not pass ({', '.join(bad)})"


def render_markdown(m: Mapping[str, Any], vs: Sequence[Mapping[str, Any]]) -> str:
    lines = [f"# {_title(m)}", "", "## Summary", ""]
    lines += _md_table(("metric", "value"), summary_rows(m))
    lines += ["", "## Waves", ""]
    lines += _md_table(WAVE_HEADERS, wave_rows(m))
    lines += ["", "## Checkers", ""]
    lines += _md_table(
        ("checker", "verdict", "detail"),
        [(v["name"], verdict_word(v["ok"]), v["detail"]) for v in vs],
    )
    lines += ["", f"**{_result_line(vs)}**", "", f"Trace hash: `{m['trace_hash']}`", "",
              "## Plots", ""]  # fmt: skip
    for name, caption in PLOTS.items():
        lines += [f"![{caption}]({name})", ""]
    return "\n".join(lines)


HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
td.pass { color: #1a7f37; font-weight: 600; }
td.FAIL { color: #cf222e; font-weight: 600; }
td.unknown { color: #9a6700; font-weight: 600; }
code { font-size: 0.9em; }
figure { margin: 1em 0; }
img { max-width: 100%; }
""".strip()


def _html_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] = ()
) -> list[str]:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    out = ["<table>", f"<tr>{head}</tr>"]
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            cls = classes[i] if i < len(classes) and classes[i] else ""
            attr = f' class="{html.escape(str(c))}"' if cls == "verdict" else ""
            cells.append(f"<td{attr}>{html.escape(str(c))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return out


def _html_page(title: str, body: Sequence[str]) -> str:
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>", f"<style>\n{HTML_STYLE}\n</style>", "</head>",
        "<body>", *body, "</body>", "</html>", "",
    ])  # fmt: skip


def render_html(m: Mapping[str, Any], vs: Sequence[Mapping[str, Any]]) -> str:
    title = _title(m)
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>Summary</h2>"]
    body += _html_table(("metric", "value"), summary_rows(m))
    body += ["<h2>Waves</h2>"]
    body += _html_table(WAVE_HEADERS, wave_rows(m))
    body += ["<h2>Checkers</h2>"]
    body += _html_table(("checker", "verdict", "detail"),
                        [(v["name"], verdict_word(v["ok"]), v["detail"]) for v in vs],
                        classes=("", "verdict", ""))  # fmt: skip
    body += [f"<p><strong>{html.escape(_result_line(vs))}</strong></p>",
             f"<p>Trace hash: <code>{html.escape(m['trace_hash'])}</code></p>",
             "<h2>Plots</h2>"]  # fmt: skip
    for name, caption in PLOTS.items():
        body += [f'<figure><img src="{name}" alt="{html.escape(caption)}">'
                 f"<figcaption>{html.escape(caption)}</figcaption></figure>"]  # fmt: skip
    return _html_page(title, body)


# --- plots ---------------------------------------------------------------------------------


def _figure() -> Figure:
    return Figure(figsize=(8.0, 4.5), dpi=100, layout="constrained")


FAULT_COLOURS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")


def _mark_events(ax: Any, s: Series) -> None:
    """On a time axis in minutes: shade each healed fault's window, draw a line where a
    fault that never heals starts, and mark the release."""
    for i, (start, stop, name) in enumerate(s.faults):
        colour = FAULT_COLOURS[i % len(FAULT_COLOURS)]
        label = name if i < len(FAULT_COLOURS) else None
        a = start / 60.0
        if stop is not None and stop > start:
            ax.axvspan(a, stop / 60.0, color=colour, alpha=0.15, lw=0, label=label)
        else:
            ax.axvline(a, color=colour, lw=1.5, ls="-.", label=label)
    if s.released_at is not None:
        ax.axvline(s.released_at / 60.0, color="#555", lw=1, ls="--", label="release")


def plot_converged(s: Series) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    for i, points in enumerate(s.converged):
        xs = [t / 60.0 for t, _ in points]
        ys = [n for _, n in points]
        size = s.wave_sizes[i]
        ax.step(xs, ys, where="post", color=COLOURS[i % len(COLOURS)],
                label=f"wave {i} ({size} host{'' if size == 1 else 's'})")  # fmt: skip
    _mark_events(ax, s)
    ax.set_xlabel("simulated minutes")
    ax.set_ylabel("hosts on the declared closure")
    ax.set_title(PLOTS["converged.png"])
    ax.set_xlim(0, max(s.end / 60.0, 1.0))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    return fig


def plot_rates(s: Series) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    width = s.bin_secs / 60.0
    for i, (kind, counts) in enumerate(s.rates.items()):
        xs = [j * width for j in range(len(counts) + 1)]
        ax.stairs(counts, xs, color=COLOURS[i % len(COLOURS)], label=kind, lw=1.5)
    _mark_events(ax, s)
    ax.set_xlabel("simulated minutes")
    ax.set_ylabel(f"ops per {s.bin_secs:g} s")
    ax.set_title(PLOTS["rates.png"])
    ax.set_xlim(0, max(s.end / 60.0, 1.0))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    return fig


def plot_latency(s: Series) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    ms = sorted(x * 1000.0 for x in s.latencies)
    if ms:
        ax.hist(ms, bins=60, color=COLOURS[0], alpha=0.85)
        for p, style in ((50, "--"), (99, ":")):
            v = ms[min(len(ms) - 1, max(0, -(-p * len(ms) // 100) - 1))]
            ax.axvline(v, color="#333", ls=style, lw=1, label=f"p{p} {v:.1f} ms")
        ax.legend(loc="upper right", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no successful check-ins", ha="center", va="center",
                transform=ax.transAxes)  # fmt: skip
    ax.set_xlabel("check-in round trip (ms)")
    ax.set_ylabel("check-ins")
    ax.set_title(f"{PLOTS['latency.png']} ({len(ms)} check-ins)")
    ax.grid(alpha=0.3)
    return fig


# --- a sweep ---------------------------------------------------------------------------------


def sweep_rows(agg: Mapping[str, Any], *, compact: bool = False) -> list[tuple[str, ...]]:
    """Per-combination rows (SWEEP_HEADERS; COMPACT_SWEEP_HEADERS for a terminal)."""
    rows: list[tuple[str, ...]] = []
    for c in agg["combinations"]:
        conv = c["convergence_secs"]
        failing = ", ".join(f"{k}×{v}" for k, v in c["failing_checkers"].items()) or "—"
        if compact:
            rows.append((
                str(c["label"]), f"{c['passed']}/{c['runs']}",
                f"{c['converged_runs']}/{c['runs']}",
                "/".join(fmt_short(conv[k]) for k in ("p50", "p90", "max")), failing,
            ))  # fmt: skip
            continue
        rows.append((
            str(c["label"]), f"{c['passed']}/{c['runs']}", f"{100 * c['pass_rate']:.0f} %",
            f"{c['converged_runs']}/{c['runs']}",
            fmt_secs(conv["p50"]), fmt_secs(conv["p90"]), fmt_secs(conv["max"]), failing,
        ))  # fmt: skip
    return rows


def fmt_short(x: float | None) -> str:
    if x is None:
        return "—"
    m, s = divmod(round(x), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


SWEEP_HEADERS = ("combination", "passed", "pass rate", "converged", "convergence p50",
                 "p90", "max", "failing checkers")  # fmt: skip
COMPACT_SWEEP_HEADERS = ("combination", "passed", "converged", "convergence p50/p90/max",
                         "failing checkers")  # fmt: skip


def render_sweep_markdown(agg: Mapping[str, Any]) -> str:
    seeds = agg["seeds"]
    seed_text = f"{seeds[0]}–{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) \
        else ", ".join(map(str, seeds))  # fmt: skip
    base = ", ".join(f"{k}={v}" for k, v in sorted(agg["base"].items())) or "defaults"
    faults = "; ".join(fault_label(f) for f in agg["faults"]) or "none"
    lines = [
        f"# fleet-sim sweep: {agg['runs']} runs, {agg['passed']} passed", "",
        f"- seeds: {seed_text} ({len(seeds)})",
        f"- swept: {', '.join(f'{k} ∈ {v}' for k, v in agg['params'].items()) or 'nothing'}",
        f"- base settings: {base}",
        f"- faults: {faults}",
        f"- checkers: {agg['checkers']}",
        "", "Convergence is the time from the release to the last host of the last wave",
        "on its declared closure, over the seeds that converged.", "",
    ]  # fmt: skip
    lines += _md_table(SWEEP_HEADERS, sweep_rows(agg))
    failed = [r for r in agg["results"] if not r["passed"]]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += _md_table(
            ("combination", "seed", "checker", "detail"),
            [(" ".join(f"{k}={v}" for k, v in r["params"].items()) or "(base)", r["seed"],
              v["name"], v["detail"]) for r in failed for v in r["failed"]],
        )  # fmt: skip
    lines.append("")
    return "\n".join(lines)


def write_sweep_report(out: Path, agg: Mapping[str, Any]) -> list[Path]:
    _mkdir(out)
    files = [out / "sweep.json", out / "sweep.md"]
    _write(files[0], dump_json(agg))
    _write(files[1], render_sweep_markdown(agg))
    return files
