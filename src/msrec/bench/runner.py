"""`msrec benchmark SPEC.yaml`: every model of a spec x every seed on one dataset, resumable, then a report.

The grid runs seed by seed (all models per seed) into `OUT/runs/` (see `store.py`); the data is prepared
once per split seed. With `tune:`, each model is tuned first (`tuning.py`) and runs as given and as tuned. A
failed run is recorded and the grid goes on. At the end: `results.csv`,
`report.md`, `report.html` (self-contained) and `plots/`.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from msrec.api import TrainResult, prepare_data, train
from msrec.bench.spec import BenchmarkSpec, Grid, resolve_grid, run_id
from msrec.bench.store import Failure, RunRecord, RunStore, config_key
from msrec.config import Config
from msrec.data.prepare import EncodedData
from msrec.errors import MsrecError
from msrec.report.tables import fmt_seconds
from msrec.report.writers import Summary, write_report
from msrec.tune.space import full_config
from msrec.tune.study import Kept


@dataclass
class BenchmarkResult:
    out: Path
    records: list[RunRecord]
    failures: list[Failure]
    grid: Grid
    ran: int = 0  # runs trained by this call (the rest were resumed from the folder)
    summary: Summary | None = field(default=None, repr=False)


def _train_one(cfg: Config, data: EncodedData) -> tuple[dict, dict[str, np.ndarray], list[str], list[str], str]:
    """Train one grid cell; return its metrics and the evaluated split's scores, labels and scenario ids."""
    return _outcome(train(cfg, save=False, data=data, console=Console(quiet=True)), data)


def _outcome(result: TrainResult, data: EncodedData) -> tuple[dict, dict[str, np.ndarray], list[str], list[str], str]:
    split = data.evaluated
    table = getattr(data, split)
    spec = result.encoder.spec()
    arrays = {"scores": result.scores[split].numpy().astype(np.float32),
              "labels": table.labels.numpy().astype(np.int8), "scenario": table.scenario.numpy().astype(np.int32)}
    if spec.levels is not None:  # each combination's level ids [S, L]: the report's per-level intervals
        arrays["levels"] = spec.levels.tensor().numpy().astype(np.int32)
    return result.metrics, arrays, list(spec.scenarios), list(spec.tasks), split


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA -"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"ETA {h}h{m:02d}m" if h else f"ETA {m}m{s:02d}s"


def _eta(todo: list[str], seconds: dict[str, list[float]], labels: dict[str, str]) -> float | None:
    """Remaining time from the runs timed so far: a model's own mean where it has run, else the mean of all."""
    every = [s for v in seconds.values() for s in v]
    if not every:
        return None
    overall = sum(every) / len(every)
    return sum(sum(seconds[labels[r]]) / len(seconds[labels[r]]) if seconds.get(labels[r]) else overall
               for r in todo)


def _todo(grid: Grid, store: RunStore, overwrite: bool) -> list[str]:
    """The runs still to train; a stored run of another config is refused rather than mixed in."""
    todo = []
    for rid, label, seed in grid.order:
        if store.done(rid) and not overwrite:
            if store.stored_config(rid) != config_key(grid.configs[rid]):
                raise MsrecError(f"{store.dir / rid}.json: stored by a different spec (its config differs from model "
                                 f"{label}, seed {seed} now); use another --out, or --overwrite to redo the runs")
            continue
        todo.append(rid)
    return todo


class _GridRun:
    """Runs the cells of one grid call, preparing the data only when a run's data section changes."""

    def __init__(self, grid: Grid, store: RunStore, console: Console):
        self.grid, self.store, self.console = grid, store, console
        self.label = {rid: label for rid, label, _ in grid.order}
        self.seed = {rid: seed for rid, _, seed in grid.order}
        self.seconds: dict[str, list[float]] = {}  # label -> wall seconds of its runs so far (for the ETA)
        self.data, self.data_key, self.ran = None, None, 0

    def data_for(self, cfg: Config) -> EncodedData:
        key = json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)
        if key != self.data_key:  # once per grid (fixed split) or once per seed (resplit)
            self.data, self.data_key = None, None  # the previous split's tensors freed before the next is made
            self.data, self.data_key = prepare_data(cfg), key
        return self.data

    def run(self, rid: str) -> None:
        """Train one run and store it, or store its failure; either way the grid goes on."""
        cfg, label, seed = self.grid.configs[rid], self.label[rid], self.seed[rid]
        given = next((run_id(x, seed) for x, t in self.grid.tuned.items() if t == label), None)
        if given and self.store.done(given) and full_config(self.grid.configs[given]) == full_config(cfg):
            self.store.copy(given, rid, label, config_key(cfg))  # tuning kept the config as given: the same run
            self.console.print(f"  {label:<16} seed {seed:<6} = {given} (the best trial was the config as given)",
                               highlight=False)
            return
        t0 = time.perf_counter()
        try:
            data = self.data_for(cfg)
            t0, c0 = time.perf_counter(), time.process_time()  # a run's time excludes data preparation
            outcome = _train_one(cfg, data)
            wall = time.perf_counter() - t0
            self._save(rid, outcome, wall, time.process_time() - c0)
            self.ran += 1
        except Exception as err:  # noqa: BLE001  (one failed run must not cost the rest of the grid)
            wall = time.perf_counter() - t0
            message = f"{type(err).__name__}: {err}".splitlines()[0]
            self.store.save_failure(rid, {"label": label, "model": cfg.model.name, "seed": seed, "error": message,
                                          "traceback": traceback.format_exc(), "config": config_key(cfg)})
            self.console.print(f"  [red]{label} seed {seed} failed[/red]: {message}", highlight=False)
        self.seconds.setdefault(label, []).append(wall)

    def _save(self, rid: str, outcome: tuple, wall: float, cpu: float, note: str = "") -> None:
        cfg, label, seed = self.grid.configs[rid], self.label[rid], self.seed[rid]
        metrics, arrays, scenarios, tasks, split = outcome
        self.store.save(rid, {"label": label, "model": cfg.model.name, "seed": seed, "tasks": tasks,
                              "scenarios": scenarios, "split": split, "wall_seconds": wall, "cpu_seconds": cpu,
                              "config": config_key(cfg), "metrics": metrics}, arrays)
        self.console.print(f"  {label:<16} seed {seed:<6} {split} macro AUC {metrics[split]['macro_auc']:.4f}  "
                           f"({fmt_seconds(wall)} s){note}", highlight=False)

    def reuse(self, rid: str, kept: Kept) -> None:
        """A tuning trial of the same config, seed and data as grid run `rid`: stored as that run."""
        cfg = self.grid.configs[rid]
        if self.store.done(rid) or full_config(kept.config) != full_config(cfg):
            return
        self._save(rid, _outcome(kept.result, self.data_for(cfg)), kept.wall_seconds, kept.cpu_seconds,
                   "  (its tuning trial)")

    def run_all(self, todo: list[str]) -> None:
        total = len(self.grid.order)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[eta]}"), console=self.console, transient=True,
                      disable=not todo) as progress:
            bar = progress.add_task("benchmark", total=total, completed=total - len(todo), eta=_fmt_eta(None))
            for i, rid in enumerate(todo):
                progress.update(bar, description=f"{self.label[rid]} seed {self.seed[rid]}")
                self.run(rid)
                progress.update(bar, advance=1, eta=_fmt_eta(_eta(todo[i + 1:], self.seconds, self.label)))


def default_out(spec: str | Path | dict | BenchmarkSpec) -> Path:
    stem = Path(spec).stem if isinstance(spec, str | Path) else "benchmark"
    return Path("runs") / "benchmarks" / stem


def run_benchmark(spec: str | Path | dict | BenchmarkSpec, out: str | Path | None = None,
                  only: list[str] | None = None, overwrite: bool = False, console: Console | None = None,
                  markdown: str | Path | None = None) -> BenchmarkResult:
    """Run (or resume) the grid of `spec` into `out`, then write results.csv, report.md and report.html.

    `only` restricts the grid to some of the spec's models (labels or names); `overwrite` redoes runs
    already stored; `markdown` also writes the report's Markdown (with its plots beside it) to that path.
    """
    console = console or Console()
    grid = resolve_grid(spec, only)
    out = Path(out) if out is not None else default_out(spec)
    store = RunStore(out)
    runner = _GridRun(grid, store, console)
    if grid.tuned:  # the tuned twins' configs come from the studies (resumed when already run)
        from msrec.bench.tuning import tune_models

        console.print(f"[bold]{grid.title}[/bold]: tuning {len(grid.tuned)} models in {out / 'tune'}", highlight=False)
        tune_models(grid, lambda label: out / "tune" / label, f"sqlite:///{(out / 'tune' / 'study.db').resolve()}",
                    console, runner.data_for, reuse=runner.reuse)
    todo = _todo(grid, store, overwrite)
    (out / "spec.yaml").write_text(grid.spec.to_yaml())
    console.print(f"[bold]{grid.title}[/bold]: {len(grid.labels)} models x {len(grid.seeds)} seeds = "
                  f"{len(grid.order)} runs; {len(grid.order) - len(todo)} already in {out}, {len(todo)} to run",
                  highlight=False)
    runner.run_all(todo)
    records, failures = store.collect(grid)
    summary = write_report(out, grid, records, failures, markdown=markdown)
    return BenchmarkResult(out, records, failures, grid, runner.ran, summary)
