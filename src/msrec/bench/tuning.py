"""Tuning a benchmark's models (`tune:` in a spec, or `msrec tune SPEC`): one Optuna study per model, on the
validation split of the grid's first seed, from the model's config in the grid (trial 0). The studies share
one SQLite storage (`OUT/tune/study.db`), so a killed benchmark resumes its tuning where it stopped, and the
tuned twins' configs (`<label>-tuned`) are the studies' best configs with each seed of the grid. Trial 0 and the
best trial are the first seed's runs of those very configs: the runner stores them instead of training them again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from msrec.bench.spec import Grid, resolve_grid, run_id
from msrec.config import Config, parse_config
from msrec.data.prepare import EncodedData
from msrec.tune.settings import TuneSettings
from msrec.tune.study import Kept, TuneResult, tune


def tune_models(grid: Grid, folder: Callable[[str], Path], storage: str, console: Console,
                data_for: Callable[[Config], EncodedData], trials: int | None = None,
                settings: TuneSettings | None = None, reuse: Callable[[str, Kept], None] | None = None
                ) -> dict[str, TuneResult]:
    """Tune every model of the grid (label -> its study's result) and set its tuned twin's configs, if any.
    `reuse(run id, kept trial)`: trial 0 and the best trial are the grid's runs of the first seed as given and
    tuned (the same config, seed and data), when this call ran them."""
    settings = settings or grid.spec.tune or TuneSettings()
    results = {}
    for label in [x for x in grid.labels if x not in grid.tuned.values()]:
        cfg = grid.configs[run_id(label, grid.seeds[0])]
        results[label] = result = tune(cfg, folder(label), trials=trials, storage=storage, settings=settings,
                                       console=console, data=data_for(cfg), name=label, keep=reuse is not None)
        console.print(f"  {label}: best trial {result.best_number}, val {result.monitor} {result.best_value:.4f} "
                      f"(default {result.default_value:.4f})", highlight=False)
        if label in grid.tuned:
            for seed in grid.seeds:
                raw = result.best_config.to_dict()
                raw["train"]["seed"] = seed
                grid.configs[run_id(grid.tuned[label], seed)] = parse_config(raw, f"{label} tuned, seed {seed}")
        if reuse is not None:
            for number, twin in ((0, label), (result.best_number, grid.tuned.get(label))):
                if twin and number in result.kept:
                    reuse(run_id(twin, grid.seeds[0]), result.kept[number])
    return results


def tune_spec(spec: str | Path, out: str | Path, trials: int | None = None, storage: str | None = None,
              only: list[str] | None = None, console: Console | None = None) -> dict[str, TuneResult]:
    """`msrec tune SPEC`: each model of a benchmark spec tuned into `OUT/<label>/` (the spec's `tune:` keys,
    if any, are the settings)."""
    from msrec.api import prepare_data

    console = console or Console(stderr=True)
    grid = resolve_grid(spec, only)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    cache: dict[str, EncodedData] = {}

    def data_for(cfg: Config) -> EncodedData:
        key = cfg.data.model_dump_json()
        if key not in cache:
            cache.clear()
            cache[key] = prepare_data(cfg)
        return cache[key]

    return tune_models(grid, lambda label: out / label, storage, console, data_for, trials)
