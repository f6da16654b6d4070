"""The tables of a tuned benchmark (`tune:` in a spec): each model as given against itself tuned, per scenario,
and the ranking before and after tuning, every difference with its paired 95% interval (`stats`).

A grid with `tune` holds each model twice, `<label>` and `<label>-tuned` (`grid.tuned`), run on the same
seeds and test rows, so the differences are paired exactly as the reference comparisons are.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from msrec.report.stats import Difference, mean_std, paired_difference, replicate_metrics
from msrec.report.tables import Cell, TableData, by_label, fmt, value

if TYPE_CHECKING:
    from msrec.bench.spec import Grid
    from msrec.bench.store import RunRecord


def paired(grid: Grid, runs: list[RunRecord], base: list[RunRecord], task: str, metric: str, cache: dict
           ) -> dict[str, Difference]:
    """column -> `runs` minus `base`, paired by seed and by test row; {} when no seed has both. `cache`: each
    run's bootstrap replicates, shared with the report's other difference tables."""
    def replicates(r: RunRecord) -> tuple:
        if (r.id, task) not in cache:
            z, j = r.arrays(), r.tasks.index(task)
            cache[r.id, task] = (z["labels"][:, j], replicate_metrics(
                z["labels"][:, j], z["scores"][:, j], z["scenario"], r.scenarios, grid.spec.bootstrap, seed=r.seed))
        return cache[r.id, task]

    by_seed = {r.seed: r for r in base}
    pairs = [(r, by_seed[r.seed]) for r in runs if r.seed in by_seed]
    if not pairs:
        return {}
    out = {}
    for column in [*pairs[0][0].scenarios, "overall", "macro"]:
        observed, reps = [], []
        for r, q in pairs:
            (y_r, rep_r), (y_q, rep_q) = replicates(r), replicates(q)
            if not np.array_equal(y_r, y_q):
                raise ValueError(f"{r.id} and {q.id} were tested on different rows; cannot pair them")
            observed.append(value(r.block(task), column, metric) - value(q.block(task), column, metric))
            reps.append(rep_r[metric][column] - rep_q[metric][column])
        out[column] = paired_difference(observed, reps, metric == "auc", seed=len(pairs))
    return out


def _delta(d: Difference | None) -> str:
    if d is None:
        return "-"
    return f"{fmt(d.delta, sign=True)}{'*' if d.significant else ''} [{fmt(d.low, sign=True)}, {fmt(d.high, sign=True)}]"


def _title(title: str, task: str, multi: bool) -> str:
    return f"{title} - {task}" if multi else title


def default_vs_tuned(grid: Grid, records: list[RunRecord], task: str, cache: dict, multi: bool) -> TableData | None:
    """Per scenario: each model's test AUC as given -> tuned, and the difference with its interval."""
    runs = by_label(grid.labels, records)
    pairs = {label: (runs[label], runs[tuned]) for label, tuned in grid.tuned.items() if label in runs and tuned in runs}
    if not pairs:
        return None
    columns = [*records[0].scenarios, "overall", "macro"]
    rows = []
    for label, (default, tuned) in pairs.items():
        diffs = paired(grid, tuned, default, task, "auc", cache)
        cells = [Cell(label)]
        for c in columns:
            a = mean_std([value(r.block(task), c, "auc") for r in default])[0]
            b = mean_std([value(r.block(task), c, "auc") for r in tuned])[0]
            d = diffs.get(c)
            cells.append(Cell(f"{fmt(a)} → {fmt(b)}, {_delta(d)}", bool(d and d.significant and d.delta > 0),
                              f"{fmt(b - a, sign=True)}{'*' if d and d.significant else ''}"))
        rows.append(cells)
    note = ("Test AUC of each model as given (its defaults) → tuned (its study's best config on the validation split, "
            "`tune/<model>/best.yaml`), means over the seeds; then tuned − default with its 95% interval (paired "
            "hierarchical bootstrap over test rows and seeds, as in the difference tables). *: the interval excludes "
            "0; bold: tuning helped significantly.")
    return TableData(_title("Default vs tuned (test AUC)", task, multi), ["model", *columns], rows, note)


def ranking(grid: Grid, records: list[RunRecord], task: str, cache: dict, multi: bool) -> TableData | None:
    """The models ranked by macro test AUC at their defaults and tuned, each against the reference at the same
    footing (default against default, tuned against tuned)."""
    runs = by_label(grid.labels, records)
    ref = grid.spec.reference
    labels = [x for x, t in grid.tuned.items() if x in runs and t in runs]
    if not labels:
        return None

    def macro(label: str) -> float:
        return mean_std([value(r.block(task), "macro", "auc") for r in runs[label]])[0]

    def rank(values: dict[str, float]) -> dict[str, int]:
        ordered = sorted(values, key=lambda x: -values[x] if not math.isnan(values[x]) else math.inf)
        return {x: i + 1 for i, x in enumerate(ordered)}

    default = {x: macro(x) for x in labels}
    tuned = {x: macro(grid.tuned[x]) for x in labels}
    before, after = rank(default), rank(tuned)
    rows = []
    for x in sorted(labels, key=lambda x: after[x]):
        vs_ref = vs_ref_tuned = None
        if ref in runs and x != ref:
            vs_ref = paired(grid, runs[x], runs[ref], task, "auc", cache).get("macro")
            if grid.tuned.get(ref) in runs:
                vs_ref_tuned = paired(grid, runs[grid.tuned[x]], runs[grid.tuned[ref]], task, "auc", cache).get("macro")
        gain = paired(grid, runs[grid.tuned[x]], runs[x], task, "auc", cache).get("macro")
        rows.append([Cell(x), Cell(str(before[x])), Cell(fmt(default[x])), Cell(_delta(vs_ref)), Cell(str(after[x])),
                     Cell(fmt(tuned[x]), after[x] == 1), Cell(_delta(vs_ref_tuned)), Cell(_delta(gain))])
    note = (f"Macro test AUC (mean of the per-scenario AUCs, mean over seeds) of each model at its defaults and "
            f"tuned, with its rank among the models. Δ vs {ref}: against {ref} at the same footing (defaults against "
            f"{ref}'s defaults, tuned against {ref} tuned), with the 95% interval of the paired hierarchical bootstrap; "
            "tuned − default: what tuning gave the model. *: the interval excludes 0.")
    header = ["model", "rank default", "default", f"Δ vs {ref}", "rank tuned", "tuned", f"Δ vs {ref} tuned",
              "tuned − default"]
    return TableData(_title("Ranking before and after tuning (macro test AUC)", task, multi), header, rows, note)


def tuned_tables(grid: Grid, records: list[RunRecord], task: str, cache: dict, multi: bool) -> list[TableData]:
    """The tuned benchmark's two tables (none for a grid without `tune`)."""
    if not getattr(grid, "tuned", None):
        return []
    return [t for t in (ranking(grid, records, task, cache, multi), default_vs_tuned(grid, records, task, cache, multi))
            if t is not None]
