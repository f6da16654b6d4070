"""`msrec demo`: every model on the synthetic default, one table of per-scenario test AUC with the oracle."""

from __future__ import annotations

import time

from rich.console import Console

from msrec.api import prepare_data, train
from msrec.config import Config
from msrec.models import list_models
from msrec.report.tables import scenario_table


def demo_config(rows: int = 300_000, epochs: int = 5, model: str = "dnn") -> Config:
    return Config.model_validate({
        "data": {"dataset": "synthetic", "options": {"rows": rows}},
        "model": {"name": model},
        "train": {"epochs": epochs, "batch_size": 2048, "lr": 0.002, "patience": 2, "progress": False},
    })


def run_demo(rows: int = 300_000, epochs: int = 5, models: list[str] | None = None,
             console: Console | None = None) -> dict[str, dict]:
    console = console or Console()
    names = models or [e.name for e in list_models()]
    cfg = demo_config(rows, epochs)
    console.print(f"synthetic data: {rows:,} rows, 3 scenarios (shares 0.6/0.3/0.1); models: {', '.join(names)}")
    data = prepare_data(cfg)
    results = {}
    for name in names:
        t0 = time.perf_counter()
        result = train(cfg.model_copy(update={"model": cfg.model.model_validate({"name": name})}), save=False,
                       data=data, console=Console(quiet=True))
        results[name] = result.metrics["test"]
        console.print(f"  {name:<16} test macro AUC {result.metrics['test']['macro_auc']:.4f}  "
                      f"({time.perf_counter() - t0:.0f}s)", highlight=False)
    console.print(scenario_table(results, "test AUC per scenario (synthetic default)"))
    return results
