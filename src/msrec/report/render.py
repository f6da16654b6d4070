"""A benchmark grid's report: results.csv, report.md, a self-contained report.html, plots, terminal tables.

Every table is built once as plain cells (`TableData`) and then written as Markdown, HTML or a rich table,
so the three never disagree. Plots use matplotlib's Agg canvas directly (no pyplot, no global backend).
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from msrec.report.stats import mean_std, paired_difference, replicate_metrics

METRICS_CSV = ("auc", "logloss", "gauc", "oracle_auc", "rows", "positives")


@dataclass
class Cell:
    text: str
    best: bool = False
    short: str | None = None  # a compact form for the terminal


@dataclass
class TableData:
    title: str
    header: list[str]
    rows: list[list[Cell]]
    note: str = ""
    muted: set[int] = field(default_factory=set)  # row indices shown dimmed (the oracle)


@dataclass
class Summary:
    tables: list[TableData]
    auc_tables: list[TableData]  # one per task: what `msrec demo` prints
    plots: dict[str, bytes]  # file name -> PNG


# ------------------------------------------------------------------------------------------ numbers
def _columns(records) -> list[str]:
    return [*records[0].scenarios, "overall", "macro"]


def _value(block: dict, column: str, metric: str) -> float:
    if column == "overall":
        return block["overall"].get(metric, math.nan)
    if column == "macro":
        if metric == "auc":
            return block.get("macro_auc", math.nan)
        if metric == "oracle_auc":
            return block.get("oracle_macro_auc", math.nan)
        values = [m.get(metric, math.nan) for m in block["scenarios"].values()]
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan
    return block["scenarios"].get(column, {}).get(metric, math.nan)


def _fmt(x: float, digits: int = 4, sign: bool = False) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _by_label(grid, records) -> dict[str, list]:
    out = {label: [] for label in grid.labels}
    for r in records:
        out[r.label].append(r)
    return {k: v for k, v in out.items() if v}


def metric_table(grid, records, task: str, metric: str, multi_task: bool) -> TableData:
    """mean +- std over seeds per model and column; the best mean per column marked; the oracle row."""
    columns = _columns(records)
    first = records[0].block(task)
    header = ["model", *[f"{c} ({first['scenarios'][c]['rows']:,})" if c in first["scenarios"] else c
                         for c in columns]]
    higher = metric == "auc"
    stats = {label: [mean_std([_value(r.block(task), c, metric) for r in runs]) for c in columns]
             for label, runs in _by_label(grid, records).items()}
    best = []
    for j in range(len(columns)):
        means = [s[j][0] for s in stats.values() if not math.isnan(s[j][0])]
        best.append((max(means) if higher else min(means)) if means else math.nan)
    rows = [[Cell(label), *[Cell(_fmt(m) + ("" if math.isnan(sd) else f" ± {sd:.4f}"), m == best[j])
                            for j, (m, sd) in enumerate(s)]] for label, s in stats.items()]
    muted = set()
    if metric == "auc" and "oracle_auc" in first["overall"]:
        oracle = [mean_std([_value(r.block(task), c, "oracle_auc") for r in records])[0] for c in columns]
        rows.append([Cell("oracle"), *[Cell(_fmt(x)) for x in oracle]])
        muted.add(len(rows) - 1)
    seeds = len(grid.seeds)
    name = "AUC" if metric == "auc" else "logloss"
    note = (f"Test {name}, mean ± std over {seeds} seed{'s' if seeds > 1 else ''} (sample std); bold: the best "
            f"mean in the column ({'highest' if higher else 'lowest'}); macro: mean of the per-scenario values.")
    if muted:
        note += " oracle: the AUC of the true probabilities, the ceiling no model can pass on these rows."
    return TableData(f"Test {name} per scenario" + (f" - {task}" if multi_task else ""), header, rows, note, muted)


def difference_table(grid, records, task: str, task_index: int, metric: str, multi_task: bool,
                     cache: dict) -> TableData | None:
    """Each model minus the reference per column, with the paired hierarchical bootstrap interval."""
    ref = grid.spec.reference
    runs = _by_label(grid, records)
    if ref not in runs or len(runs) < 2:
        return None
    columns = _columns(records)
    ref_by_seed = {r.seed: r for r in runs[ref]}

    def replicates(r):
        key = (r.id, task)
        if key not in cache:
            z = r.arrays()
            cache[key] = (z["labels"][:, task_index], replicate_metrics(
                z["labels"][:, task_index], z["scores"][:, task_index], z["scenario"], r.scenarios,
                grid.spec.bootstrap, seed=r.seed))
        return cache[key]

    higher = metric == "auc"
    rows = []
    for label, model_runs in runs.items():
        if label == ref:
            continue
        pairs = [(r, ref_by_seed[r.seed]) for r in model_runs if r.seed in ref_by_seed]
        if not pairs:
            continue
        cells = [Cell(label)]
        for c in columns:
            observed, reps = [], []
            for r, q in pairs:
                y_r, rep_r = replicates(r)
                y_q, rep_q = replicates(q)
                if not np.array_equal(y_r, y_q):
                    raise ValueError(f"{r.id} and {q.id} were tested on different rows; cannot pair them")
                observed.append(_value(r.block(task), c, metric) - _value(q.block(task), c, metric))
                reps.append(rep_r[metric][c] - rep_q[metric][c])
            d = paired_difference(observed, reps, higher, seed=len(pairs))
            text = f"{_fmt(d.delta, sign=True)}{'*' if d.significant else ''} [{_fmt(d.low, sign=True)}, " \
                   f"{_fmt(d.high, sign=True)}] {d.wins}/{d.seeds}"
            cells.append(Cell(text, d.significant and ((d.delta > 0) == higher),
                              f"{_fmt(d.delta, sign=True)}{'*' if d.significant else ''}"))
        rows.append(cells)
    if not rows:
        return None
    name = "AUC" if higher else "logloss"
    note = (f"Δ = model − {ref} in test {name}, averaged over the seeds where both ran. [95% interval] from a "
            f"paired hierarchical bootstrap ({grid.spec.bootstrap} replicates): within a seed the test rows are "
            f"resampled with Poisson(1) weights shared by both models; across seeds the seeds are resampled with "
            f"replacement, so the interval holds both test-sampling and training (seed) noise. "
            f"*: the interval excludes 0 (bold: a significant improvement). k/n: seeds where the model was better.")
    return TableData(f"Difference from {ref} ({name})" + (f" - {task}" if multi_task else ""),
                     ["model", *columns], rows, note)


def training_table(grid, records, failures) -> TableData:
    rows = []
    by_label = _by_label(grid, records)
    failed = {label: sum(f.label == label for f in failures) for label in grid.labels}
    for label in grid.labels:
        runs = by_label.get(label, [])
        if not runs:
            rows.append([Cell(label), *[Cell("-")] * 7, Cell(f"0/{len(grid.seeds)}")])
            continue
        t = [r.metrics["train"] for r in runs]
        sps, sps_sd = mean_std([x["samples_per_second"] for x in t])
        rows.append([
            Cell(label if grid.models[label] == label else f"{label} ({grid.models[label]})"),
            Cell(f"{int(t[0]['parameters']):,}"),
            Cell(f"{sps:,.0f}" + ("" if math.isnan(sps_sd) else f" ± {sps_sd:,.0f}")),
            Cell(f"{mean_std([x['seconds'] for x in t])[0]:.1f}"),
            Cell(f"{mean_std([r.wall_seconds for r in runs])[0]:.1f}"),
            Cell(_fmt(mean_std([r.cpu_seconds for r in runs])[0], 1)),
            Cell(f"{mean_std([x['epochs'] for x in t])[0]:.1f}"),
            Cell(f"{mean_std([x['best_epoch'] for x in t])[0]:.1f}"),
            Cell(f"{len(runs)}/{len(runs) + failed[label]}" if failed[label] else f"{len(runs)}"),
        ])
    note = ("Means over seeds. samples/s: training throughput (training steps only); train s: fit time including "
            "validation; run s: the whole run (fit, test scoring), wall clock; run CPU s: its CPU time over all "
            "threads "
            "(steadier than wall time on a shared machine); epochs: epochs run (early stopping on the "
            "validation macro AUC), best epoch: the one whose weights were kept; runs: finished (/tried).")
    return TableData("Training", ["model", "parameters", "samples/s", "train s", "run s", "run CPU s", "epochs",
                                  "best epoch", "runs"], rows, note)


def failure_table(failures) -> TableData | None:
    if not failures:
        return None
    return TableData("Failed runs", ["model", "seed", "error"],
                     [[Cell(f.label), Cell(str(f.seed)), Cell(f.error)] for f in failures],
                     "Retried by the next `msrec benchmark` on the same folder; the traceback is in "
                     "runs/<model>--seed<seed>.failed.json.")


# -------------------------------------------------------------------------------------------- plots
def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def auc_plot(grid, records, tasks: list[str]) -> bytes:
    """Per-scenario (and macro) test AUC per model: mean with std error bars; the oracle as black ticks."""
    from matplotlib.figure import Figure

    columns = [*records[0].scenarios, "macro"]
    runs = _by_label(grid, records)
    fig = Figure(figsize=(max(6.0, 0.22 * len(runs) * len(columns) + 2), 3.6 * len(tasks)))
    axes = fig.subplots(len(tasks), 1, squeeze=False)[:, 0]
    colors = [f"C{i % 10}" for i in range(len(runs))]
    width = 0.8 / max(1, len(runs))
    for ax, task in zip(axes, tasks):
        lows, highs = [], []
        for i, (label, model_runs) in enumerate(runs.items()):
            stats = [mean_std([_value(r.block(task), c, "auc") for r in model_runs]) for c in columns]
            means = np.array([m for m, _ in stats])
            sds = np.nan_to_num(np.array([s for _, s in stats]))
            x = np.arange(len(columns)) - 0.4 + width * (i + 0.5)
            ax.bar(x, means, width, yerr=sds, capsize=2, color=colors[i], label=label)
            lows.append(np.nanmin(means - sds))
            highs.append(np.nanmax(means + sds))
        first = records[0].block(task)
        if "oracle_auc" in first["overall"]:
            oracle = [mean_std([_value(r.block(task), c, "oracle_auc") for r in records])[0] for c in columns]
            ax.hlines(oracle, np.arange(len(columns)) - 0.45, np.arange(len(columns)) + 0.45, colors="black",
                      linestyles="dashed", label="oracle")
            highs.append(np.nanmax(oracle))
        lo, hi = np.nanmin(lows), np.nanmax(highs)
        ax.set_ylim(max(0.0, lo - 0.1 * (hi - lo) - 0.005), min(1.0, hi + 0.05 * (hi - lo) + 0.005))
        ax.set_xticks(np.arange(len(columns)), columns)
        ax.set_ylabel("test AUC" + (f" ({task})" if len(tasks) > 1 else ""))
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title(f"{grid.title}: test AUC per scenario (mean ± std over seeds)")
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


def curves_plot(grid, records) -> bytes:
    """Validation macro AUC and logloss per epoch, mean over seeds (seeds that stopped early drop out)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 3.6))
    ax_auc, ax_loss = fig.subplots(1, 2)
    for i, (label, runs) in enumerate(_by_label(grid, records).items()):
        for ax, key in ((ax_auc, "val_macro_auc"), (ax_loss, "val_logloss")):
            per_epoch: dict[int, list[float]] = {}
            for r in runs:
                for h in r.metrics["train"]["history"]:
                    per_epoch.setdefault(h["epoch"], []).append(h[key])
            epochs = sorted(per_epoch)
            stats = [mean_std(per_epoch[e]) for e in epochs]
            means = np.array([m for m, _ in stats])
            ax.plot(epochs, means, marker="o", ms=3, color=f"C{i % 10}", label=label)
            sds = np.array([s for _, s in stats])
            if np.isfinite(sds).any():
                ax.fill_between(epochs, means - np.nan_to_num(sds), means + np.nan_to_num(sds),
                                color=f"C{i % 10}", alpha=0.12)
    ax_auc.set_title("validation macro AUC")
    ax_loss.set_title("validation logloss")
    for ax in (ax_auc, ax_loss):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


# ------------------------------------------------------------------------------------------ writers
def summarize(grid, records, failures) -> Summary:
    tables: list[TableData] = []
    auc_tables: list[TableData] = []
    plots: dict[str, bytes] = {}
    if records:
        tasks = records[0].tasks
        multi = len(tasks) > 1
        cache: dict = {}
        for j, task in enumerate(tasks):
            auc = metric_table(grid, records, task, "auc", multi)
            auc_tables.append(auc)
            tables += [auc, metric_table(grid, records, task, "logloss", multi)]
            for metric in ("auc", "logloss"):
                diff = difference_table(grid, records, task, j, metric, multi, cache)
                if diff is not None:
                    tables.append(diff)
        tables.append(training_table(grid, records, failures))
        plots = {"auc.png": auc_plot(grid, records, tasks), "curves.png": curves_plot(grid, records)}
    failed = failure_table(failures)
    if failed is not None:
        tables.append(failed)
    return Summary(tables, auc_tables, plots)


def write_csv(path: Path, records) -> None:
    """One row per model x seed x scenario (plus overall and macro) x task x test metric."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "seed", "scenario", "task", "metric", "value"])
    for r in records:
        for task in r.tasks:
            block = r.block(task)
            for column in [*r.scenarios, "overall", "macro"]:
                for metric in METRICS_CSV:
                    if column == "macro" and metric in ("rows", "positives"):
                        continue
                    value = _value(block, column, metric)
                    if column == "macro" and metric == "gauc":
                        value = block.get("macro_gauc", math.nan)
                    if not math.isnan(value) or (metric in ("auc", "logloss")):
                        w.writerow([r.label, r.seed, column, task, metric, repr(float(value))])
    path.write_text(buf.getvalue())


def _header_lines(grid, records, failures) -> list[str]:
    import torch

    import msrec

    data = grid.configs[grid.order[0][0]].data
    first = records[0] if records else None
    rows = f"{sum(first.block(first.tasks[0])['scenarios'][s]['rows'] for s in first.scenarios):,}" if first else "?"
    split = ("a fixed split for every seed (data.split_seed = "
             f"{data.split_seed})" if not grid.spec.resplit else "a new split per seed (split seed = run seed)")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    what = (f"{len(grid.labels)} models ({', '.join(grid.labels)}) x {len(grid.seeds)} seeds ({', '.join(map(str, grid.seeds))}) on "
            f"`{data.dataset or data.train}`; {first.split if first else 'test'} rows: {rows}; {split}.")
    how = (f"{len(records)} runs finished, {len(failures)} failed. Generated {when} by msrec {msrec.__version__} "
           f"(torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
           f"{platform.machine()}) from `{grid.source}`.")
    return [what, how]


def to_markdown(grid, summary: Summary, header: list[str], images: dict[str, str]) -> str:
    lines = [f"# Benchmark: {grid.title}", "", *header, ""]
    for t in summary.tables:
        lines += [f"## {t.title}", "", t.note, "", "| " + " | ".join(t.header) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(t.header) - 1)) + "|"]
        for i, row in enumerate(t.rows):
            cells = [f"**{c.text}**" if c.best else (f"*{c.text}*" if i in t.muted else c.text) for c in row]
            lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
        lines.append("")
    if images:
        lines += ["## Plots", ""] + [f"![{name}]({src})" for name, src in images.items()] + [""]
    spec = yaml.safe_dump(grid.spec.model_dump(mode="json", exclude_none=True), sort_keys=False)
    lines += ["## Spec", "", "```yaml", spec.rstrip(), "```", ""]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}td{text-align:right}td:first-child{text-align:left}.best{font-weight:bold;background:#e8f5e9}
.muted{color:#777;font-style:italic}.note{color:#555;font-size:13px;max-width:1000px}img{max-width:100%}
pre{background:#f6f6f6;padding:1em;font-size:12px}"""


def to_html(grid, summary: Summary, header: list[str]) -> str:
    e = html.escape
    head = (f"<!doctype html><html><head><meta charset='utf-8'><title>Benchmark: {e(grid.title)}</title>"
            f"<style>{CSS}</style></head><body><h1>Benchmark: {e(grid.title)}</h1>")
    parts = [head]
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
    spec = yaml.safe_dump(grid.spec.model_dump(mode="json", exclude_none=True), sort_keys=False)
    parts.append(f"<h2>Spec</h2><pre>{e(spec)}</pre></body></html>")
    return "\n".join(parts)


def rich_table(t: TableData, compact: bool = False):
    """The table for the terminal; `compact` shows the short form of cells that have one (no intervals)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=t.title + (" (* = 95% interval excludes 0; see the report)" if compact else ""))
    for j, h in enumerate(t.header):
        table.add_column(h, justify="left" if j == 0 else "right", no_wrap=j == 0)
    for i, row in enumerate(t.rows):
        texts = [escape(c.short if compact and c.short else c.text) for c in row]
        table.add_row(*[f"[bold green]{x}[/bold green]" if c.best else x for x, c in zip(texts, row)],
                      style="dim italic" if i in t.muted else None)
    return table


def write_report(out: Path, grid, records, failures, markdown: str | Path | None = None) -> Summary:
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
