"""A benchmark's report: results.csv, report.md (plots in plots/), a self-contained report.html.

`summarize` builds the tables, the plots and the reading (the table in a sentence) once; each writer only
lays them out.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from msrec import __version__
from msrec.report.plots import auc_plot, curves_plot, size_plot
from msrec.report.stats import Difference, mean_std
from msrec.report.tables import (
    TableData,
    by_label,
    columns_of,
    difference_table,
    differences,
    failure_table,
    fmt,
    level_tables,
    metric_table,
    training_table,
    value,
)
from msrec.report.tuned import tuned_tables

if TYPE_CHECKING:
    from msrec.bench.spec import Grid
    from msrec.bench.store import Failure, RunRecord

METRICS_CSV = ("auc", "logloss", "gauc", "oracle_auc", "rows", "positives")


@dataclass
class Summary:
    tables: list[TableData]
    auc_tables: list[TableData]  # one per task: what `msrec demo` and `msrec benchmark` print
    plots: dict[str, bytes]  # file name -> PNG
    reading: list[str]  # one sentence per task: the smallest scenario's winner, its interval, the oracle gap


def reading(grid: Grid, records: list[RunRecord], diffs: dict[str, dict[str, Difference]], task: str) -> str:
    """Who wins the smallest scenario (the one a multi-scenario model is for), by how much against the
    reference with its 95% interval, and how far the oracle still is."""
    first = records[0].block(task)
    smallest = min(first["scenarios"], key=lambda n: first["scenarios"][n]["rows"])
    runs = by_label(grid.labels, records)
    means = {label: mean_std([value(r.block(task), smallest, "auc") for r in rs])[0] for label, rs in runs.items()}
    means = {label: m for label, m in means.items() if not math.isnan(m)}
    if not means:
        return ""
    winner, ref = max(means, key=means.get), grid.spec.reference
    text = (f"In the smallest scenario, {smallest} ({first['scenarios'][smallest]['rows']:,} rows), {winner} has "
            f"the highest test AUC, {fmt(means[winner])}")
    other = winner if winner != ref else max(diffs, key=lambda label: means.get(label, -math.inf), default=None)
    d = diffs.get(other, {}).get(smallest)  # none without the reference or a run paired with it
    if d is not None:
        text += (f", {fmt(d.delta, sign=True)} against {ref}" if other == winner else
                 f"; the next best, {other}, is {fmt(d.delta, sign=True)} against it")
        text += (f" (95% interval [{fmt(d.low, sign=True)}, {fmt(d.high, sign=True)}], "
                 f"{'significant' if d.significant else 'not significant'})")
    oracle = mean_std([value(r.block(task), smallest, "oracle_auc") for r in records])[0]
    if not math.isnan(oracle):
        text += f"; the oracle reaches {fmt(oracle)} there, {fmt(oracle - means[winner])} above {winner}"
        if oracle > 0.5:  # the share of the oracle's lift over chance: (AUC - 0.5) / (oracle - 0.5)
            text += f", which has {(means[winner] - 0.5) / (oracle - 0.5):.0%} of the oracle's lift over 0.5"
    return (f"{task}: " if len(records[0].tasks) > 1 else "") + text + "."


def summarize(grid: Grid, records: list[RunRecord], failures: list[Failure]) -> Summary:
    tables: list[TableData] = []
    auc_tables: list[TableData] = []
    plots: dict[str, bytes] = {}
    readings: list[str] = []
    if records:
        tasks = records[0].tasks
        multi = len(tasks) > 1
        cache: dict = {}
        for task in tasks:
            auc = metric_table(grid, records, task, "auc", multi)
            auc_tables.append(auc)
            tables += [auc, metric_table(grid, records, task, "logloss", multi), *level_tables(grid, records, task, multi)]
            for metric in ("auc", "logloss"):
                diffs = differences(grid, records, task, metric, cache)
                if metric == "auc":
                    readings.append(reading(grid, records, diffs, task))
                if metric == "auc":
                    plots[f"size-{task}.png" if multi else "size.png"] = size_plot(grid, records, task, diffs)
                if diffs:
                    rows_of = {n: b["rows"] for n, b in records[0].block(task)["scenarios"].items()}
                    tables.append(difference_table(grid, diffs, task, metric, multi, rows_of))
            tables += tuned_tables(grid, records, task, cache, multi)  # a spec with `tune`: default vs tuned
        tables.append(training_table(grid, records, failures))
        plots = {"auc.png": auc_plot(grid, records, tasks), **plots, "curves.png": curves_plot(grid, records)}
    failed = failure_table(failures)
    if failed is not None:
        tables.append(failed)
    return Summary(tables, auc_tables, plots, readings)


def write_csv(path: Path, records: list[RunRecord]) -> None:
    """One row per model x seed x scenario (plus overall and macro) x task x test metric."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "seed", "scenario", "task", "metric", "value"])
    for r in records:
        for task in r.tasks:
            block = r.block(task)
            for column in columns_of(block):
                for metric in METRICS_CSV:
                    if column in ("macro", "weighted_macro") and metric in ("rows", "positives"):
                        continue
                    v = value(block, column, metric)
                    if not math.isnan(v) or metric in ("auc", "logloss"):
                        w.writerow([r.label, r.seed, column, task, metric, repr(float(v))])
    path.write_text(buf.getvalue())


def _header_lines(grid: Grid, records: list[RunRecord], failures: list[Failure]) -> list[str]:
    data = grid.configs[grid.order[0][0]].data
    first = records[0] if records else None
    rows = f"{sum(first.block(first.tasks[0])['scenarios'][s]['rows'] for s in first.scenarios):,}" if first else "?"
    split = ("a fixed split for every seed (data.split_seed = "
             f"{data.split_seed})" if not grid.spec.resplit else "a new split per seed (split seed = run seed)")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    what = (f"{len(grid.labels)} models ({', '.join(grid.labels)}) x {len(grid.seeds)} seeds "
            f"({', '.join(map(str, grid.seeds))}) on `{data.dataset or data.train}`; "
            f"{first.split if first else 'test'} rows: {rows}; {split}.")
    how = (f"{len(records)} runs finished, {len(failures)} failed. Generated {when} by msrec {__version__} "
           f"(torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
           f"{platform.machine()}) from `{grid.source}`.")
    return [what, how]


def to_markdown(grid: Grid, summary: Summary, header: list[str], images: dict[str, str]) -> str:
    lines = [f"# Benchmark: {grid.title}", ""]
    for r in filter(None, summary.reading):
        lines += [f"**Reading.** {r}", ""]
    lines += [*header, ""]
    for t in summary.tables:
        lines += [f"## {t.title}", "", t.note, "", "| " + " | ".join(t.header) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(t.header) - 1)) + "|"]
        for i, row in enumerate(t.rows):
            cells = [f"**{c.text}**" if c.best else (f"*{c.text}*" if i in t.muted else c.text) for c in row]
            lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
        lines.append("")
    if images:
        lines += ["## Plots", ""] + [f"![{name}]({src})" for name, src in images.items()] + [""]
    lines += ["## Spec", "", "```yaml", grid.spec.to_yaml().rstrip(), "```", ""]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}td{text-align:right}td:first-child{text-align:left}.best{font-weight:bold;background:#e8f5e9}
.muted{color:#777;font-style:italic}.note{color:#555;font-size:13px;max-width:1000px}img{max-width:100%}
.reading{font-size:15px;background:#f3f7fb;border-left:4px solid #4a78a8;padding:.6em 1em}
pre{background:#f6f6f6;padding:1em;font-size:12px}"""


def to_html(grid: Grid, summary: Summary, header: list[str]) -> str:
    e = html.escape
    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>Benchmark: {e(grid.title)}</title>"
              f"<style>{CSS}</style></head><body><h1>Benchmark: {e(grid.title)}</h1>")]
    parts += [f"<p class='reading'><b>Reading.</b> {e(r)}</p>" for r in summary.reading if r]
    parts += [f"<p>{e(line).replace('`', '')}</p>" for line in header]
    for t in summary.tables:
        parts.append(f"<h2>{e(t.title)}</h2><p class='note'>{e(t.note)}</p><table><tr>"
                     + "".join(f"<th>{e(h)}</th>" for h in t.header) + "</tr>")
        for i, row in enumerate(t.rows):
            cls = " class='muted'" if i in t.muted else ""
            parts.append(f"<tr{cls}>" + "".join(f"<td class='best'>{e(c.text)}</td>" if c.best else
                                                f"<td>{e(c.text)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    if summary.plots:
        parts.append("<h2>Plots</h2>")
        for name, png in summary.plots.items():
            parts.append(f"<p><img alt='{e(name)}' src='data:image/png;base64,"
                         f"{base64.b64encode(png).decode('ascii')}'></p>")
    parts.append(f"<h2>Spec</h2><pre>{e(grid.spec.to_yaml())}</pre></body></html>")
    return "\n".join(parts)


def write_report(out: Path, grid: Grid, records: list[RunRecord], failures: list[Failure],
                 markdown: str | Path | None = None) -> Summary:
    """results.csv, report.md (plots in plots/), report.html (plots embedded); optionally a Markdown copy
    elsewhere (e.g. benchmarks/results/NAME.md) with its plots beside it as NAME-<plot>.png."""
    summary = summarize(grid, records, failures)
    header = _header_lines(grid, records, failures)
    write_csv(out / "results.csv", records)
    (out / "plots").mkdir(exist_ok=True)
    for name, png in summary.plots.items():
        (out / "plots" / name).write_bytes(png)
    (out / "report.md").write_text(to_markdown(grid, summary, header, {n: f"plots/{n}" for n in summary.plots}))
    (out / "report.html").write_text(to_html(grid, summary, header))
    if markdown:
        md = Path(markdown)
        md.parent.mkdir(parents=True, exist_ok=True)
        images = {}
        for name, png in summary.plots.items():
            (md.parent / f"{md.stem}-{name}").write_bytes(png)
            images[name] = f"{md.stem}-{name}"
        md.write_text(to_markdown(grid, summary, header, images))
    return summary
