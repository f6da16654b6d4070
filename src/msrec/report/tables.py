"""The result tables: the per-scenario table (`msrec train`, `evaluate`, `benchmark`), the differences from
the reference, training figures and failures.

Every table is built once as plain cells (`TableData`) and then written as Markdown, HTML or a rich table,
so the three never disagree. A metrics block is one task's `{overall, scenarios, macro_auc, ...}`.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from rich.console import Console, ConsoleOptions, Group
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from msrec.report.cells import LIMIT, WIDE, Cell, TableData, by_label, columns_of, fmt, fmt_seconds, level_blocks, value
from msrec.report.many import difference_cell, long_difference_rows, long_scenario_cells
from msrec.report.stats import Difference, mean_std, paired_differences, replicate_metrics

if TYPE_CHECKING:  # the report reads the records the benchmark stores; it does not run one
    from msrec.bench.spec import Grid
    from msrec.bench.store import Failure, RunRecord


# ------------------------------------------------------------------------------------------- tables
def scenario_cells(title: str, runs: dict[str, list[dict]], metric: str = "auc", note: str = "",
                   limit: int | None = LIMIT) -> TableData:
    """The one per-scenario table: a row per model with its mean (± std over several blocks: seeds) per
    scenario, overall, macro and row-weighted macro; the best mean per column marked; the oracle row where the
    data knows its true probabilities. More than `WIDE` scenarios: `long_scenario_cells`."""
    first = next(iter(runs.values()))[0]
    if len(first["scenarios"]) > WIDE:
        return long_scenario_cells(title, runs, metric, note, limit)
    columns = columns_of(first)
    header = ["model", *[f"{n} ({first['scenarios'][n]['rows']:,})" for n in first["scenarios"]], "overall",
              "macro", "weighted macro"]
    higher = metric == "auc"
    stats = {label: [mean_std([value(b, c, metric) for b in blocks]) for c in columns]
             for label, blocks in runs.items()}
    best = []
    for j in range(len(columns)):
        means = [s[j][0] for s in stats.values() if not math.isnan(s[j][0])]
        best.append((max(means) if higher else min(means)) if means else math.nan)
    rows = [[Cell(label), *[Cell(fmt(m) + ("" if math.isnan(sd) else f" ± {sd:.4f}"), m == best[j])
                            for j, (m, sd) in enumerate(s)]] for label, s in stats.items()]
    muted = set()
    if metric == "auc" and "oracle_auc" in first["overall"]:
        blocks = [b for bs in runs.values() for b in bs]
        rows.append([Cell("oracle"), *[Cell(fmt(mean_std([value(b, c, "oracle_auc") for b in blocks])[0]))
                                       for c in columns]])
        muted.add(len(rows) - 1)
    return TableData(title, header, rows, note, muted)


def scenario_table(results: dict[str, dict], title: str, task: str | None = None,
                   metric: str = "auc") -> FittedTable | Group:
    """`msrec train` / `evaluate`: one split's metrics per model, for `task` (default: the only one); with a
    hierarchical scenario, a table per level follows the one of the combinations."""
    blocks = {}
    for model, split in results.items():
        tasks = split["tasks"]
        blocks[model] = [tasks[task] if task else next(iter(tasks.values()))]
    table = rich_table(scenario_cells(title, blocks, metric))
    levels = level_blocks(next(iter(blocks.values()))[0])
    if not levels:
        return table
    return Group(table, *[rich_table(scenario_cells(f"{title} - per {column}",
                                                    {m: [level_blocks(b[0])[column]] for m, b in blocks.items()},
                                                    metric)) for column in levels])


def _tagged(title: str, task: str, multi_task: bool) -> str:
    return f"{title} - {task}" if multi_task else title


def metric_table(grid: Grid, records: list[RunRecord], task: str, metric: str, multi_task: bool) -> TableData:
    """The per-scenario table of a benchmark: mean ± std over seeds."""
    seeds = len(grid.seeds)
    name = "AUC" if metric == "auc" else "logloss"
    note = (f"Test {name}, mean ± std over {seeds} seed{'s' if seeds > 1 else ''} (sample std); bold: the best "
            f"mean in the column ({'highest' if metric == 'auc' else 'lowest'}); macro: mean of the per-scenario "
            "values; weighted macro: their mean weighted by each scenario's test rows.")
    runs = {label: [r.block(task) for r in rs] for label, rs in by_label(grid.labels, records).items()}
    table = scenario_cells(_tagged(f"Test {name} per scenario", task, multi_task), runs, metric, note)
    if table.muted or "oracle" in table.header:
        table.note += " oracle: the AUC of the true probabilities, the ceiling no model can pass on these rows."
    return table


def level_tables(grid: Grid, records: list[RunRecord], task: str, multi_task: bool) -> list[TableData]:
    """A hierarchical scenario's test AUC per level value (a level value's figures are those of its rows),
    mean ± std over seeds, each followed by the differences from the reference with their intervals; none for
    a flat scenario."""
    levels = level_blocks(records[0].block(task))
    out = []
    for j, column in enumerate(levels):
        runs = {label: [level_blocks(r.block(task))[column] for r in rs]
                for label, rs in by_label(grid.labels, records).items()}
        out.append(scenario_cells(_tagged(f"Test AUC per {column}", task, multi_task), runs, "auc",
                                  f"Test AUC of the rows of each {column} value (every combination holding it), mean "
                                  "± std over seeds; macro: mean over the values; weighted macro: weighted by rows."))
        diffs = level_differences(grid, records, task, j, column)
        table = difference_table(grid, diffs, task, "auc", multi_task,
                                 {n: b["rows"] for n, b in levels[column]["scenarios"].items()})
        if table is not None:
            table.title = _tagged(f"Difference from {grid.spec.reference} (AUC) per {column}", task, multi_task)
            table.note += f" The rows of each {column} value are resampled as in the table of combinations."
            out.append(table)
    return out


def _paired(grid: Grid, records: list[RunRecord], columns: list[str], observed, replicates,
            higher: bool) -> dict[str, dict[str, Difference]]:
    """label -> column -> the model minus the reference, paired by seed and by test row: `observed(run, column)`
    a run's figure, `replicates(run)` its (labels, column -> bootstrap replicates) or None (not resampled)."""
    runs = by_label(grid.labels, records)
    ref = grid.spec.reference
    if ref not in runs or len(runs) < 2:
        return {}
    ref_by_seed = {r.seed: r for r in runs[ref]}
    out = {}
    for label, model_runs in runs.items():
        pairs = [(r, ref_by_seed[r.seed]) for r in model_runs if r.seed in ref_by_seed]
        if label == ref or not pairs:
            continue
        found, reps = [], []
        for r, q in pairs:
            mine, theirs = replicates(r), replicates(q)
            if mine is None or theirs is None:
                return {}
            (y_r, rep_r), (y_q, rep_q) = mine, theirs
            if not np.array_equal(y_r, y_q):
                raise ValueError(f"{r.id} and {q.id} were tested on different rows; cannot pair them")
            found.append([observed(r, c) - observed(q, c) for c in columns])
            reps.append(np.stack([rep_r[c] - rep_q[c] for c in columns], 1))
        out[label] = dict(zip(columns, paired_differences(np.array(found, dtype=np.float64), np.stack(reps), higher,
                                                          seed=len(pairs))))
    return out


def level_differences(grid: Grid, records: list[RunRecord], task: str, level: int,
                      column: str) -> dict[str, dict[str, Difference]]:
    """`differences` per value of level `level` (named `column`): each value's rows (the combinations holding
    it; those fallen back from the level count for none) resampled with weights shared by both models; empty
    for runs stored without their level ids."""
    values = list(level_blocks(records[0].block(task))[column]["scenarios"])
    cache: dict[str, tuple | None] = {}

    def replicates(r: RunRecord) -> tuple | None:
        if r.id not in cache:
            z, j = r.arrays(), r.tasks.index(task)
            if "levels" not in z:
                cache[r.id] = None
                return None
            ids = z["levels"][z["scenario"], level]
            keep = ids > 0
            y = z["labels"][keep, j]
            cache[r.id] = (y, replicate_metrics(y, z["scores"][keep, j], ids[keep] - 1, values, grid.spec.bootstrap,
                                                seed=r.seed)["auc"])
        return cache[r.id]

    return _paired(grid, records, [*values, "macro", "weighted_macro"],
                   lambda r, c: value(level_blocks(r.block(task))[column], c, "auc"), replicates, True)


def differences(grid: Grid, records: list[RunRecord], task: str, metric: str,
                cache: dict) -> dict[str, dict[str, Difference]]:
    """label -> column -> the model minus the reference, paired by seed and by test row (the paired
    hierarchical bootstrap of `stats`); empty without the reference or a second model. `cache` keeps
    each run's bootstrap replicates between the calls of one report."""

    def replicates(r: RunRecord) -> tuple:
        if (r.id, task) not in cache:
            z, j = r.arrays(), r.tasks.index(task)
            cache[r.id, task] = (z["labels"][:, j], replicate_metrics(
                z["labels"][:, j], z["scores"][:, j], z["scenario"], r.scenarios, grid.spec.bootstrap, seed=r.seed))
        y, reps = cache[r.id, task]
        return y, reps[metric]

    return _paired(grid, records, [*records[0].scenarios, "overall", "macro", "weighted_macro"],
                   lambda r, c: value(r.block(task), c, metric), replicates, metric == "auc")


def difference_table(grid: Grid, diffs: dict[str, dict[str, Difference]], task: str, metric: str,
                     multi_task: bool, rows_of: dict[str, int] | None = None,
                     limit: int | None = LIMIT) -> TableData | None:
    """Each model minus the reference per column (`differences`), with its 95% interval; more than `WIDE`
    scenarios (their test rows in `rows_of`): a row per scenario and a column per model."""
    if not diffs:
        return None
    higher = metric == "auc"
    long = rows_of is not None and len(rows_of) > WIDE
    rows = long_difference_rows(diffs, rows_of, higher, limit) if long else \
        [[Cell(label), *[difference_cell(d, higher) for d in per_column.values()]]
         for label, per_column in diffs.items()]
    ref, name = grid.spec.reference, "AUC" if higher else "logloss"
    note = (f"Δ = model − {ref} in test {name}, averaged over the seeds where both ran. [95% interval] from a "
            f"paired hierarchical bootstrap ({grid.spec.bootstrap} replicates): within a seed the test rows are "
            f"resampled with Poisson(1) weights shared by both models; across seeds the seeds are resampled with "
            f"replacement, so the interval holds both test-sampling and training (seed) noise. "
            f"*: the interval excludes 0 (bold: a significant improvement). k/n: seeds where the model was better.")
    header = (["scenario (rows)", *diffs] if long else
              ["model", *[{"weighted_macro": "weighted macro"}.get(c, c) for c in next(iter(diffs.values()))]])
    return TableData(_tagged(f"Difference from {ref} ({name})", task, multi_task), header, rows, note)


def training_table(grid: Grid, records: list[RunRecord], failures: list[Failure]) -> TableData:
    rows = []
    runs_of = by_label(grid.labels, records)
    failed = {label: sum(f.label == label for f in failures) for label in grid.labels}
    for label in grid.labels:
        runs = runs_of.get(label, [])
        if not runs:
            rows.append([Cell(label), *[Cell("-")] * 7, Cell(f"0/{len(grid.seeds)}")])
            continue
        t = [r.metrics["train"] for r in runs]
        sps, sps_sd = mean_std([x["samples_per_second"] for x in t])
        rows.append([
            Cell(label if grid.models[label] == label else f"{label} ({grid.models[label]})"),
            Cell(f"{int(t[0]['parameters']):,}"),
            Cell(f"{sps:,.0f}" + ("" if math.isnan(sps_sd) else f" ± {sps_sd:,.0f}")),
            Cell(fmt_seconds(mean_std([x["seconds"] for x in t])[0])),
            Cell(fmt_seconds(mean_std([r.wall_seconds for r in runs])[0])),
            Cell(fmt_seconds(mean_std([r.cpu_seconds for r in runs])[0])),
            Cell(fmt(mean_std([x["epochs"] for x in t])[0], 1)),
            Cell(fmt(mean_std([x["best_epoch"] for x in t])[0], 1)),
            Cell(f"{len(runs)}/{len(runs) + failed[label]}" if failed[label] else f"{len(runs)}"),
        ])
    note = ("Means over seeds. samples/s: training throughput (training steps only); train s: fit time including "
            "validation; run s: the whole run (fit, test scoring), wall clock; run CPU s: its CPU time over all "
            "threads (steadier than wall time on a shared machine); epochs: epochs run (early stopping on the "
            "validation macro AUC), best epoch: the one whose weights were kept; runs: finished (/tried).")
    return TableData("Training", ["model", "parameters", "samples/s", "train s", "run s", "run CPU s", "epochs",
                                  "best epoch", "runs"], rows, note)


def failure_table(failures: list[Failure]) -> TableData | None:
    if not failures:
        return None
    return TableData("Failed runs", ["model", "seed", "error"],
                     [[Cell(f.label), Cell(str(f.seed)), Cell(f.error)] for f in failures],
                     "Retried by the next `msrec benchmark` on the same folder; the traceback is in "
                     "runs/<model>--seed<seed>.failed.json.")


def extend_table(task: str, comparison: dict[str, dict]) -> TableData:
    """`msrec extend`'s comparison for one task: per new scenario (and over all new rows) the extension's test AUC
    and, per baseline (the old model scoring the rows as unknown, the model trained from scratch), the
    baseline's AUC and the extension's difference from it with its 95% paired bootstrap interval (metrics.json
    `extend.comparison`). A row per scenario and baseline, so that it fits 80 columns."""
    rows = []
    for name, entry in comparison.items():
        for i, key in enumerate(k for k in entry if k.startswith("vs_")):
            d = entry[key]
            rows.append([Cell(name if i == 0 else ""), Cell(fmt(entry["extend_auc"]) if i == 0 else ""),
                         Cell(key[3:]), Cell(fmt(entry[f"{key[3:]}_auc"])), Cell(fmt(d["delta"], sign=True)),
                         Cell(f"[{fmt(d['low'], sign=True)}, {fmt(d['high'], sign=True)}]")])
    return TableData(f"{task}: test AUC of the new scenarios, extend against each baseline",
                     ["scenario", "extend", "baseline", "its AUC", "extend - it", "95% interval"], rows)


def rich_table(t: TableData, compact: bool = False) -> FittedTable:
    """The table for the terminal; `compact` shows the short form of cells that have one (no intervals).
    Laid out to fit the console (`FittedTable`)."""
    title = t.title + (" (* = 95% interval excludes 0; see the report)" if compact else "")
    texts = [[escape(c.short if compact and c.short else c.text) for c in row] for row in t.rows]
    marked = [[f"[bold green]{x}[/bold green]" if c.best else x for x, c in zip(xs, row)]
              for xs, row in zip(texts, t.rows)]
    return FittedTable(title, [escape(h) for h in t.header], marked, t.muted)


class Layout(NamedTuple):
    """A table's cells (rich markup) with the styles of some rows or columns (the muted oracle)."""

    header: list[str]
    rows: list[list[str]]
    row_styles: dict[int, str]
    column_styles: dict[int, str]


class FittedTable:
    """A table laid out for the console's width: as built (a row per model) where it fits (its headers may
    wrap); otherwise transposed (a row per column) if that fits; otherwise the narrower of the two cut into
    parts of a few columns each, the first column repeated. rich fits a table to the console by cutting its
    cells, so that a narrow terminal, or output piped to a file (80 columns), showed AUCs as `0.58…`."""

    def __init__(self, title: str, header: list[str], rows: list[list[str]], muted: set[int]):
        self.title = title
        self.wide = Layout(header, rows, {i: "dim italic" for i in muted}, {})
        self.tall = Layout(["", *[row[0] for row in rows]],
                           [[h, *[row[j] for row in rows]] for j, h in enumerate(header) if j],
                           {}, {i + 1: "dim italic" for i in muted})

    def table(self, layout: Layout, columns: list[int] | None = None, title: str | None = None) -> Table:
        header, rows, row_styles, column_styles = layout
        columns = columns if columns is not None else list(range(len(header)))
        title = self.title if title is None else title
        table = Table(title=title, min_width=len(title))  # a title longer than the table wrapped mid-phrase
        for j in columns:
            table.add_column(header[j], justify="left" if j == 0 else "right", no_wrap=j == 0,
                             style=column_styles.get(j))
        for i, row in enumerate(rows):
            table.add_row(*[row[j] for j in columns], style=row_styles.get(i))
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions):
        uncut = options.update(max_width=1 << 16)

        def width(table: Table) -> int:
            return Measurement.get(console, uncut, table).maximum

        def cells_whole(table: Table) -> bool:  # headers may wrap (or lose a letter); no cell may be cut
            probe = Console(file=io.StringIO(), width=options.max_width, color_system=None)
            probe.print(table)
            return not any(line.startswith("│") and "…" in line for line in probe.file.getvalue().splitlines())

        wide, tall = self.table(self.wide), self.table(self.tall)
        fits = [t for t in (wide, tall) if width(t) <= options.max_width or cells_whole(t)]
        if fits:
            yield fits[0]
            return
        layout = self.wide if width(wide) <= width(tall) else self.tall
        groups: list[list[int]] = [[0]]
        for j in range(1, len(layout.header)):  # greedily: as many columns as fit beside the first
            if len(groups[-1]) > 1 and width(self.table(layout, [*groups[-1], j], "")) > options.max_width:
                groups.append([0])
            groups[-1].append(j)
        rest, size = list(range(1, len(layout.header))), math.ceil((len(layout.header) - 1) / len(groups))
        even = [[0, *rest[k:k + size]] for k in range(0, len(rest), size)]  # as many parts, as even as fit
        if all(width(self.table(layout, g, "")) <= options.max_width for g in even):
            groups = even
        for k, columns in enumerate(groups):  # a part's title as wide as its table (a long one would widen it)
            yield self.table(layout, columns, self.title if k == 0 else "(continued)")
