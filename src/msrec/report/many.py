"""Tables of many scenarios (more than `WIDE`): a row per scenario, largest first, and a column per model; with a
limit, the largest and the smallest scenarios and the rest summarised in one line, so that a terminal table of
1,000 scenarios fits one screen (results.csv and the plots hold every scenario)."""

from __future__ import annotations

import math

from msrec.report.cells import LIMIT, Cell, TableData, by_size, fmt, value
from msrec.report.stats import Difference, mean_std


def _mean_cell(m: float, sd: float, best: bool) -> Cell:
    return Cell(fmt(m) + ("" if math.isnan(sd) else f" ± {sd:.4f}"), best, fmt(m))


def long_scenario_cells(title: str, runs: dict[str, list[dict]], metric: str, note: str,
                        limit: int | None = LIMIT) -> TableData:
    """The per-scenario table of many scenarios: a row per scenario (largest first; with `limit`, the largest
    and the smallest, the ones between summarised in one line by the mean of their values), a column per model,
    then overall, macro and the row-weighted macro; the best mean per row marked."""
    first = next(iter(runs.values()))[0]
    rows_of = {n: b["rows"] for n, b in first["scenarios"].items()}
    head, middle, tail = by_size(list(first["scenarios"]), rows_of, limit)
    higher = metric == "auc"
    oracle = metric == "auc" and "oracle_auc" in first["overall"]
    blocks = [b for bs in runs.values() for b in bs]

    def row(label: str, columns: list[str]) -> list[Cell]:
        def per_block(b: dict) -> float:
            values = [v for c in columns if not math.isnan(v := value(b, c, metric))]
            return sum(values) / len(values) if values else math.nan

        stats = [mean_std([per_block(b) for b in bs]) for bs in runs.values()]
        means = [m for m, _ in stats if not math.isnan(m)]
        best = (max(means) if higher else min(means)) if means else math.nan
        cells = [Cell(label), *[_mean_cell(m, sd, m == best) for m, sd in stats]]
        if oracle:
            cells.append(Cell(fmt(mean_std([sum(value(b, c, "oracle_auc") for c in columns) / len(columns)
                                            for b in blocks])[0])))
        return cells

    body = [row(f"{n} ({rows_of[n]:,})", [n]) for n in head]
    if middle:
        body.append(row(f"… {len(middle):,} more ({rows_of[middle[-1]]:,}-{rows_of[middle[0]]:,} rows each): "
                        "their mean", middle))
    body += [row(f"{n} ({rows_of[n]:,})", [n]) for n in tail]
    body += [row(c.replace("_", " "), [c]) for c in ("overall", "macro", "weighted_macro")]
    header = ["scenario (rows)", *runs, *(["oracle"] if oracle else [])]
    shown = "" if not middle else f" The {len(head)} largest and {len(tail)} smallest scenarios are shown; " \
        "results.csv holds every one."
    return TableData(title, header, body, note.replace("in the column", "in the row") + shown)


def difference_cell(d: Difference, higher: bool) -> Cell:
    star = "*" if d.significant else ""
    return Cell(f"{fmt(d.delta, sign=True)}{star} [{fmt(d.low, sign=True)}, {fmt(d.high, sign=True)}] "
                f"{d.wins}/{d.seeds}", d.significant and ((d.delta > 0) == higher), f"{fmt(d.delta, sign=True)}{star}")


def long_difference_rows(diffs: dict[str, dict[str, Difference]], rows_of: dict[str, int], higher: bool,
                          limit: int | None) -> list[list[Cell]]:
    """A row per scenario (largest first; the middle ones summarised: mean Δ, and how many are significantly
    better / worse), then overall, macro and weighted macro; a column per model."""
    head, middle, tail = by_size(list(rows_of), rows_of, limit)
    out = [[Cell(f"{n} ({rows_of[n]:,})"), *[difference_cell(d[n], higher) for d in diffs.values()]] for n in head]
    if middle:
        cells = [Cell(f"… {len(middle):,} more ({rows_of[middle[-1]]:,}-{rows_of[middle[0]]:,} rows each): mean Δ, "
                      "significantly better / worse")]
        for d in diffs.values():
            deltas = [d[n].delta for n in middle if not math.isnan(d[n].delta)]
            better = sum(d[n].significant and (d[n].delta > 0) == higher for n in middle)
            worse = sum(d[n].significant and (d[n].delta > 0) != higher for n in middle)
            mean = sum(deltas) / len(deltas) if deltas else math.nan
            cells.append(Cell(f"{fmt(mean, sign=True)}; {better} / {worse}", short=f"{fmt(mean, sign=True)}"))
        out.append(cells)
    out += [[Cell(f"{n} ({rows_of[n]:,})"), *[difference_cell(d[n], higher) for d in diffs.values()]] for n in tail]
    out += [[Cell(c.replace("_", " ")), *[difference_cell(d[c], higher) for d in diffs.values()]]
            for c in ("overall", "macro", "weighted_macro")]
    return out


