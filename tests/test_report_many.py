"""Reports of many scenarios: a terminal table of 1,000 scenarios fits one screen (the largest and the smallest,
the rest summarised in a line), a few scenarios keep the table of a row per model, the row-weighted macro
figure, per-level tables, and the size plot."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from rich.console import Console

from msrec.report.cells import value
from msrec.report.tables import LIMIT, rich_table, scenario_cells, scenario_table
from msrec.train.metrics import evaluation_report


def split(scenarios: int, seed: int = 0, users: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    n = 20 * scenarios
    s = np.minimum(rng.zipf(1.3, n) - 1, scenarios - 1)
    s[:scenarios] = np.arange(scenarios)  # every scenario present
    y = rng.integers(0, 2, (n, 1)).astype(np.float32)
    p = rng.random((n, 1)).astype(np.float32)
    return evaluation_report(torch.from_numpy(y), torch.from_numpy(p), torch.from_numpy(s),
                             [f"s{k}" for k in range(scenarios)], ["click"],
                             users=torch.from_numpy(rng.integers(0, 9, n)) if users else None)


def printed(renderable) -> str:
    console = Console(file=io.StringIO(), width=120)
    console.print(renderable)
    return console.file.getvalue()


def test_a_thousand_scenarios_fit_one_screen_with_the_largest_and_smallest_shown():
    results = {"dnn": split(1000), "star": split(1000, seed=1)}
    text = printed(scenario_table(results, "AUC"))
    assert len(text.splitlines()) <= 50 and max(map(len, text.splitlines())) <= 120
    block = results["dnn"]["tasks"]["click"]
    by_rows = sorted(block["scenarios"], key=lambda n: -block["scenarios"][n]["rows"])
    assert f"{by_rows[0]} (" in text and f"{by_rows[-1]} (" in text  # the largest and the smallest
    assert f"… {1000 - 2 * LIMIT:,} more" in text
    table = scenario_cells("AUC", {m: [r["tasks"]["click"]] for m, r in results.items()})
    assert table.header == ["scenario (rows)", "dnn", "star"]
    assert [r[0].text for r in table.rows[-3:]] == ["overall", "macro", "weighted macro"]
    summary = table.rows[LIMIT]
    middle = by_rows[LIMIT:-LIMIT]  # the summarised line is the mean of the scenarios it stands for
    expected = np.nanmean([block["scenarios"][n]["auc"] for n in middle])
    assert summary[1].short == f"{expected:.4f}"


def test_few_scenarios_keep_a_row_per_model_with_both_macro_figures():
    results = {"dnn": split(3)}
    table = scenario_cells("AUC", {m: [r["tasks"]["click"]] for m, r in results.items()})
    assert table.header[0] == "model" and table.header[-3:] == ["overall", "macro", "weighted macro"]
    block = results["dnn"]["tasks"]["click"]
    aucs = [(b["auc"], b["rows"]) for b in block["scenarios"].values()]
    weighted = sum(a * n for a, n in aucs) / sum(n for _, n in aucs)
    assert table.rows[0][-1].text == f"{weighted:.4f}"
    # a run that predates the stored figure: the weighted macro is computed from the scenario blocks
    old = {k: v for k, v in block.items() if k != "weighted_macro_auc"}
    assert math.isclose(value(old, "weighted_macro", "auc"), weighted)


def test_per_level_tables_follow_the_combinations_table():
    from msrec.schema import ScenarioLevels

    rng = np.random.default_rng(0)
    n = 300
    s = torch.from_numpy(rng.integers(0, 3, n))
    levels = ScenarioLevels(["country", "placement"], [["DE", "US"], ["feed", "top"]], [[1, 1], [2, 1], [2, 2]])
    report = evaluation_report(torch.from_numpy(rng.integers(0, 2, (n, 1))).float(), torch.rand(n, 1), s,
                               ["DE/feed", "US/feed", "US/top"], ["click"], levels=levels)
    text = printed(scenario_table({"dnn": report}, "AUC"))
    assert "AUC - per country" in text and "AUC - per placement" in text
    assert "US (" in text and "top (" in text


def test_a_table_wider_than_the_console_turns_its_columns_into_rows_with_every_number_whole():
    """rich fits a table to the console by cutting cells: in a narrow terminal, or piped to a file (80 columns),
    a per-country table showed `0.58…` and `weig…`."""
    rng = np.random.default_rng(0)
    names = ["BR/feed", "DE/feed", "FR/feed", "JP/feed", "US/feed", "UK/feed"]
    n = 3000
    report = evaluation_report(torch.from_numpy(rng.integers(0, 2, (n, 1))).float(), torch.rand(n, 1),
                               torch.from_numpy(rng.integers(0, len(names), n)), names, ["click"])
    cells = scenario_cells("AUC", {"dnn": [report["tasks"]["click"]]})
    numbers = [c.text for c in cells.rows[0][1:]]
    for width, wide in ((60, False), (200, True)):
        console = Console(file=io.StringIO(), width=width)
        console.print(rich_table(cells))
        text = console.file.getvalue()
        assert "…" not in text and all(x in text for x in numbers), text
        assert max(map(len, text.splitlines())) <= width
        rows = [line for line in text.splitlines() if line.startswith("│")]
        assert len(rows) == (1 if wide else len(cells.header) - 1), text  # a row per model, or per column
        assert "weighted macro" in text


def test_a_table_too_wide_either_way_is_cut_into_tables_of_a_few_columns_with_every_number_whole():
    from msrec.report.cells import Cell, TableData

    header = ["model", *[f"s{k} ({100 * k:,})" for k in range(14)], "overall", "macro", "weighted macro"]
    rows = [[Cell(f"model_{m}"), *[Cell(f"0.{m}{j:03d} ± 0.00{j % 10}{m}") for j in range(17)]] for m in range(6)]
    console = Console(file=io.StringIO(), width=70)
    console.print(rich_table(TableData("AUC", header, rows)))
    text = console.file.getvalue()
    assert "…" not in text and max(map(len, text.splitlines())) <= 70, text
    assert all(c.text in text for row in rows for c in row) and all(h in text for h in header), text
    # turned (narrower: 7 columns of 18 rows) and cut: the first column, the row labels, in every part
    assert text.count("(continued)") >= 1 and text.count("weighted macro") == text.count("(continued)") + 1, text


def test_the_metrics_speed_benchmark_runs_at_a_tiny_size():
    """benchmarks/metrics_speed.py checks the loop and the one pass agree before it times them."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "metrics_speed.py"
    proc = subprocess.run([sys.executable, str(script), "--rows", "3000", "--scenarios", "40", "--repeats", "1",
                           "--bootstrap-rows", "1000", "--replicates", "10"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for metric in ("auc", "report", "bootstrap"):
        assert any(line.split()[:1] == [metric] and line.endswith("x") for line in proc.stdout.splitlines())
