"""The plain cells every result table is built from, and how a column's value is read from a metrics block.

A metrics block is one task's `{overall, scenarios, macro_auc, ...}`; a column is a scenario's name, "overall",
"macro" or "weighted_macro".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from msrec.bench.store import RunRecord


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


# ------------------------------------------------------------------------------------------ numbers
def fmt(x: float | None, digits: int = 4, sign: bool = False) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def fmt_seconds(x: float | None) -> str:
    """Three significant digits, so that a run of 0.04 s does not read 0.0."""
    if x is None or math.isnan(x) or x == 0:
        return fmt(x, 0)
    return fmt(x, max(0, 2 - math.floor(math.log10(abs(x)))))


WIDE = 12  # more scenarios than this: a row per scenario and a column per model
LIMIT = 10  # a table of many scenarios shows this many largest and smallest, the rest summarised in a line


def _weighted_macro(block: dict, metric: str) -> float:
    """The mean over scenarios of a metric, each weighted by its rows (the stored one for AUC where the block
    has it; computed from the scenario blocks for a run that predates it)."""
    if metric == "auc" and "weighted_macro_auc" in block:
        return block["weighted_macro_auc"]
    pairs = [(m.get(metric, math.nan), m.get("rows", 0)) for m in block["scenarios"].values()]
    pairs = [(v, n) for v, n in pairs if v is not None and not math.isnan(v) and n]
    return sum(v * n for v, n in pairs) / sum(n for _, n in pairs) if pairs else math.nan


def value(block: dict, column: str, metric: str) -> float:
    """A metric of one column of a task's block: a scenario's name, "overall", "macro" (the mean over
    scenarios; the stored macro AUC / oracle AUC / GAUC where the block has it) or "weighted_macro" (the
    mean weighted by each scenario's rows)."""
    if column == "overall":
        return block["overall"].get(metric, math.nan)
    if column == "weighted_macro":
        return _weighted_macro(block, metric)
    if column == "macro":
        stored = {"auc": "macro_auc", "oracle_auc": "oracle_macro_auc", "gauc": "macro_gauc"}.get(metric)
        if stored:
            return block.get(stored, math.nan)
        values = [m.get(metric, math.nan) for m in block["scenarios"].values()]
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan
    return block["scenarios"].get(column, {}).get(metric, math.nan)


def by_label(labels: list[str], records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Records grouped by model label, in the grid's order; labels without a finished run left out."""
    out: dict[str, list[RunRecord]] = {label: [] for label in labels}
    for r in records:
        out[r.label].append(r)
    return {k: v for k, v in out.items() if v}


def columns_of(block: dict) -> list[str]:
    return [*block["scenarios"], "overall", "macro", "weighted_macro"]


def level_blocks(block: dict) -> dict[str, dict]:
    """A hierarchical scenario's per-level blocks (level column -> a block of its values), shaped as a task's
    block (the task's overall figures included) so that every table reads them; empty for a flat scenario."""
    return {column: {**level, "overall": block["overall"]} for column, level in block.get("levels", {}).items()}


def by_size(names: list[str], rows: dict[str, int], limit: int | None) -> tuple[list[str], list[str], list[str]]:
    """Scenarios by rows, largest first: (shown first, summarised, shown last); all shown without `limit`."""
    ordered = sorted(names, key=lambda n: -rows[n])
    if limit is None or len(ordered) <= 2 * limit + 1:
        return ordered, [], []
    return ordered[:limit], ordered[limit:-limit], ordered[-limit:]


