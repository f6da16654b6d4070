"""`msrec demo`: a short benchmark on the synthetic default (one seed, every model), printed and reported.

It is `msrec benchmark` with a built-in spec: the per-scenario test AUC table beside the oracle (the AUC of
the true click probabilities), each model's difference from dnn, and the full report in `runs/demo`.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from msrec.report.benchmark import BenchmarkResult, run_benchmark
from msrec.report.render import rich_table

# Sized to stay under 5 minutes on 2 cores with the 13-model zoo (measured per model on the shared development
# machine, see the benchmark issue note): 80,000 training rows, two epochs of 1,024-row batches.
DEMO_ROWS = 100_000
DEMO_EPOCHS = 2
DEMO_TRAIN = {"batch_size": 1024, "lr": 0.002, "patience": 2}


def demo_spec(rows: int = DEMO_ROWS, epochs: int = DEMO_EPOCHS, models: list[str] | None = None,
              seed: int = 2022) -> dict:
    return {"title": f"msrec demo: synthetic default, {rows:,} rows", "data": {"dataset": "synthetic",
            "options": {"rows": rows}}, "train": {"epochs": epochs, **DEMO_TRAIN}, "models": models or "all",
            "seeds": [seed]}


def run_demo(rows: int = DEMO_ROWS, epochs: int = DEMO_EPOCHS, models: list[str] | None = None,
             out: str | Path = "runs/demo", console: Console | None = None) -> BenchmarkResult:
    """Every model (or `models`) once on fresh synthetic data; print the tables, write the report to `out`."""
    console = console or Console()
    console.print(f"synthetic data: {rows:,} rows, 3 scenarios (shares 0.6/0.3/0.1), {epochs} epochs per model",
                  highlight=False)
    result = run_benchmark(demo_spec(rows, epochs, models), out=out, overwrite=True, console=console)
    summary = result.summary
    for table in summary.auc_tables:
        console.print(rich_table(table))
    for table in summary.tables:
        if table.title.startswith("Difference") and "AUC" in table.title:
            console.print(rich_table(table, compact=True))
    console.print(f"report: {Path(out) / 'report.html'} (also report.md, results.csv)", highlight=False)
    return result
