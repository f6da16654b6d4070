"""Per-scenario result tables for the terminal (rich) and for Markdown files."""

from __future__ import annotations

import math

from rich.table import Table


def _task_block(metrics_split: dict, task: str | None) -> dict:
    return metrics_split["tasks"][task] if task and "tasks" in metrics_split else metrics_split


def scenario_rows(results: dict[str, dict], task: str | None = None, metric: str = "auc") -> tuple[list[str], list]:
    """Columns (scenario names with row counts, overall, macro) and one row per model; the oracle row
    is added when the data knows its truth."""
    first = _task_block(next(iter(results.values())), task)
    names = list(first["scenarios"])
    columns = [f"{n} ({first['scenarios'][n]['rows']:,})" for n in names] + ["overall", "macro"]
    rows = []
    for model, split in results.items():
        b = _task_block(split, task)
        rows.append([model, *[b["scenarios"].get(n, {}).get(metric, math.nan) for n in names],
                     b["overall"][metric], b["macro_auc"] if metric == "auc" else math.nan])
    if metric == "auc" and "oracle_auc" in first["overall"]:
        rows.append(["oracle", *[first["scenarios"][n].get("oracle_auc", math.nan) for n in names],
                     first["overall"]["oracle_auc"], first.get("oracle_macro_auc", math.nan)])
    return columns, rows


def _cell(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def scenario_table(results: dict[str, dict], title: str, task: str | None = None, metric: str = "auc") -> Table:
    columns, rows = scenario_rows(results, task, metric)
    table = Table(title=title)
    table.add_column("model")
    for c in columns:
        table.add_column(c, justify="right")
    model_rows = [r for r in rows if r[0] != "oracle"]
    best = [max((r[j] for r in model_rows if not math.isnan(r[j])), default=math.nan) for j in range(1, len(columns) + 1)]
    for r in rows:
        cells = [_cell(x) for x in r[1:]]
        if r[0] != "oracle":
            cells = [f"[bold]{c}[/bold]" if x == b else c for c, x, b in zip(cells, r[1:], best)]
        table.add_row(r[0], *cells, style="dim" if r[0] == "oracle" else None)
    return table
