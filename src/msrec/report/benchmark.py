"""`msrec benchmark SPEC.yaml`: every model of a spec x every seed on one dataset, resumable, then a report.

A spec (YAML, unknown keys are errors):

    title: MovieLens 100K            # optional, heads the report
    config: ../../configs/x.yaml     # optional base run config (its model section is ignored) ...
    data: {dataset: movielens-100k}  # ... and/or inline sections merged over it
    train: {epochs: 10, batch_size: 2048}
    models:                          # `all` (every registered model) or a list of names / entries
      - dnn
      - {name: star, label: star-wide, options: {hidden: [512, 256]}, train: {lr: 0.002}}
    seeds: 3                         # a count (train.seed, train.seed + 1, ...) or a list of seeds
    resplit: false                   # see below
    reference: dnn                   # the model every other one is compared with
    bootstrap: 1000                  # bootstrap replicates for the significance of differences

**The split.** The seed drives both the data split and the initialisation. By default (`resplit: false`)
the split is fixed for the whole grid (`data.split_seed`, or the first seed when unset): every model and
every seed is tested on the same rows, so the spread over seeds is training noise only, the data is
encoded once, and per-row paired comparisons are exact. With `resplit: true` each seed also draws its own
split (and the data is re-encoded per seed), so the spread includes split noise as well.

**The output folder** (resumable): `runs/<label>--seed<seed>.json` (config, metrics, wall time) and `.npz`
(test scores, labels and scenario ids, for the paired bootstrap), both written atomically (a temporary
file renamed into place; the scores before the JSON), so a run is done exactly when its JSON exists and a
killed grid resumes where it stopped. A failed run writes `<id>.failed.json` and the grid goes on; failed
runs are retried on the next resume. At the end: `results.csv`, `report.md`, `report.html` (self-contained)
and `plots/`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from msrec.config import Config, format_validation_error, load_config, parse_config
from msrec.errors import MsrecError
from msrec.train.run import json_safe

LABEL_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """One row of the grid: a registered model, its options and training overrides."""

    name: str
    label: str | None = None  # how the report calls it (default: the name); needed for two variants of one model
    options: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.label or self.name


class BenchmarkSpec(_Strict):
    title: str | None = None
    config: str | None = None
    data: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    models: Literal["all"] | list[ModelSpec | str] = "all"
    seeds: int | list[int] = 3
    resplit: bool = False
    reference: str = "dnn"
    bootstrap: int = Field(1000, ge=100)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and v < 1:
            raise ValueError("seeds: need at least one")
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("seeds: need a non-empty list of distinct seeds")
        return v


@dataclass
class RunRecord:
    """One finished run as stored in the output folder."""

    id: str
    label: str
    model: str
    seed: int
    tasks: list[str]
    scenarios: list[str]
    split: str
    metrics: dict
    wall_seconds: float
    cpu_seconds: float  # process CPU time of the run (all threads): comparable on a shared, busy machine
    scores_path: Path

    def block(self, task: str) -> dict:
        """The evaluated split's metrics block of one task."""
        split = self.metrics[self.split]
        return split["tasks"][task] if "tasks" in split else split

    def arrays(self) -> dict[str, np.ndarray]:
        with np.load(self.scores_path) as z:
            return {k: z[k] for k in z.files}


@dataclass
class Failure:
    id: str
    label: str
    model: str
    seed: int
    error: str


@dataclass
class Grid:
    """A resolved spec: the run configs in the order they are run (seed by seed, all models per seed)."""

    spec: BenchmarkSpec
    title: str
    labels: list[str]
    models: dict[str, str]  # label -> registered model name
    seeds: list[int]
    configs: dict[str, Config]  # run id -> config
    order: list[tuple[str, str, int]]  # (run id, label, seed)
    source: str  # where the spec came from, for the report


@dataclass
class BenchmarkResult:
    out: Path
    records: list[RunRecord]
    failures: list[Failure]
    grid: Grid
    ran: int = 0  # runs trained by this call (the rest were resumed from the folder)
    summary: Any = field(default=None, repr=False)


def run_id(label: str, seed: int) -> str:
    return f"{label}--seed{seed}"


# --------------------------------------------------------------------------------------------- the spec
def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_spec(spec: str | Path | dict | BenchmarkSpec) -> tuple[BenchmarkSpec, Path, str]:
    """The validated spec, the folder its relative paths are read from, and a name for messages."""
    if isinstance(spec, BenchmarkSpec):
        return spec, Path.cwd(), "benchmark spec"
    if isinstance(spec, dict):
        raw, base, source = spec, Path.cwd(), "benchmark spec"
    else:
        path = Path(spec)
        if not path.is_file():
            raise MsrecError(f"{path}: benchmark spec not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise MsrecError(f"{path}: not valid YAML ({err})") from None
        base, source = path.parent, str(path)
    if not isinstance(raw, dict):
        raise MsrecError(f"{source}: expected a mapping (config/data/train, models, seeds)")
    try:
        return BenchmarkSpec.model_validate(raw), base, source
    except ValidationError as err:
        raise MsrecError(format_validation_error(err, source)) from None


def _base_config(spec: BenchmarkSpec, base: Path, source: str) -> dict:
    raw: dict[str, Any] = {}
    if spec.config:
        path = Path(spec.config)
        path = path if path.is_absolute() or path.exists() else base / path
        raw = load_config(path).to_dict()
        raw.pop("model", None)
    if spec.data:
        data = dict(spec.data)
        for key in ("train", "val", "test", "path"):  # inline paths are relative to the spec, like a config's
            value = data.get(key)
            if isinstance(value, str) and not Path(value).is_absolute() and not Path(value).exists() \
                    and (base / value).exists():
                data[key] = str(base / value)
        raw["data"] = _merge(raw.get("data", {}), data)
    if spec.train:
        raw["train"] = _merge(raw.get("train", {}), spec.train)
    if "data" not in raw:
        raise MsrecError(f"{source}: needs a `config` file or a `data` section")
    return raw


def resolve_grid(spec: str | Path | dict | BenchmarkSpec, only: list[str] | None = None) -> Grid:
    """Every run's config, validated before anything trains (a typo must not surface hours later)."""
    from msrec.models import list_models
    from msrec.models.registry import parse_options

    spec, base, source = load_spec(spec)
    raw = _base_config(spec, base, source)
    base_cfg = parse_config({**raw, "model": {"name": "dnn"}}, source)
    if spec.resplit and base_cfg.data.split_seed is not None:
        raise MsrecError(f"{source}: `resplit: true` draws a split per seed; remove data.split_seed")
    entries = [ModelSpec(name=e.name) for e in list_models()] if spec.models == "all" else [
        m if isinstance(m, ModelSpec) else ModelSpec(name=m) for m in spec.models]
    if only:
        unknown = [o for o in only if not any(o in (e.key, e.name) for e in entries)]
        if unknown:
            raise MsrecError(f"--model {', '.join(unknown)}: not in {source} (has {', '.join(e.key for e in entries)})")
        entries = [e for e in entries if e.key in only or e.name in only]
    labels = [e.key for e in entries]
    if not entries:
        raise MsrecError(f"{source}: `models` is empty")
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise MsrecError(f"{source}: models: `{dupes[0]}` appears twice; give the variants distinct `label`s")
    for e in entries:
        if not LABEL_RE.match(e.key):
            raise MsrecError(f"{source}: models: label `{e.key}` may use only letters, digits, `_`, `-` and `.`")
        if "seed" in e.train:
            raise MsrecError(f"{source}: models: {e.key}: `train.seed` is set by `seeds`, not per model")
        parse_options(e.name, e.options)
    seeds = spec.seeds if isinstance(spec.seeds, list) else [base_cfg.train.seed + k for k in range(spec.seeds)]
    split_seed = base_cfg.data.split_seed if base_cfg.data.split_seed is not None else seeds[0]
    configs, order = {}, []
    for seed in seeds:
        for e in entries:
            run = copy.deepcopy(raw)
            run["model"] = {"name": e.name, **e.options}
            run["train"] = {**run.get("train", {}), **e.train, "seed": seed, "progress": False}
            run["data"]["split_seed"] = seed if spec.resplit else split_seed
            rid = run_id(e.key, seed)
            configs[rid] = parse_config(run, f"{source} (model {e.key}, seed {seed})")
            order.append((rid, e.key, seed))
    title = spec.title or (base_cfg.data.dataset or Path(base_cfg.data.train or "data").stem)
    return Grid(spec, title, labels, {e.key: e.name for e in entries}, seeds, configs, order, source)


# ------------------------------------------------------------------------------------------ the folder
def _atomic_write(path: Path, data: bytes) -> None:
    """Written beside its target and renamed: a reader (or a resume) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _config_key(cfg: Config) -> Any:
    return json.loads(json.dumps(cfg.to_dict(), sort_keys=True))


def _load_record(path: Path) -> RunRecord:
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MsrecError(f"{path}: not valid JSON ({err}); delete it to redo the run") from None
    return RunRecord(id=path.stem, label=raw["label"], model=raw["model"], seed=raw["seed"], tasks=raw["tasks"],
                     scenarios=raw["scenarios"], split=raw["split"], metrics=_nan_back(raw["metrics"]),
                     wall_seconds=raw["wall_seconds"], cpu_seconds=raw.get("cpu_seconds", math.nan),
                     scores_path=path.with_suffix(".npz"))


def _nan_back(obj: Any) -> Any:
    """JSON stores a missing metric (NaN) as null; read it back as NaN."""
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: _nan_back(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_back(v) for v in obj]
    return obj


def _stored_config(path: Path) -> Any:
    try:
        return json.loads(path.read_text()).get("config")
    except (json.JSONDecodeError, OSError):
        return None


# ------------------------------------------------------------------------------------------- one run
def _train_one(cfg: Config, data) -> tuple[dict, dict[str, np.ndarray], list[str], list[str], str]:
    """Train one grid cell; return its metrics and the evaluated split's scores, labels and scenario ids."""
    from msrec.api import train

    result = train(cfg, save=False, data=data, console=Console(quiet=True))
    split = "test" if "test" in data.tables else "val"
    table = data.tables[split]
    spec = result.encoder.spec()
    scores = result.scores[split]
    arrays = {"scores": scores.numpy().astype(np.float32), "labels": table.labels.numpy().astype(np.int8),
              "scenario": table.scenario.numpy().astype(np.int32)}
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


def run_benchmark(spec: str | Path | dict | BenchmarkSpec, out: str | Path | None = None,
                  only: list[str] | None = None, overwrite: bool = False, console: Console | None = None,
                  markdown: str | Path | None = None) -> BenchmarkResult:
    """Run (or resume) the grid of `spec` into `out`, then write results.csv, report.md and report.html.

    `only` restricts the grid to some of the spec's models (labels or names); `overwrite` redoes runs
    already stored; `markdown` also writes the report's Markdown (with its plots beside it) to that path.
    """
    from msrec.api import prepare_data
    from msrec.report.render import write_report

    console = console or Console()
    grid = resolve_grid(spec, only)
    if out is None:
        stem = Path(spec).stem if isinstance(spec, str | Path) else "benchmark"
        out = Path("runs") / "benchmarks" / stem
    out = Path(out)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for stale in runs_dir.glob(".*.tmp"):  # left by a killed run; never a finished result
        stale.unlink(missing_ok=True)
    todo = []
    for rid, label, seed in grid.order:
        done = runs_dir / f"{rid}.json"
        if done.is_file() and not overwrite:
            if _stored_config(done) != _config_key(grid.configs[rid]):
                raise MsrecError(f"{done}: stored by a different spec (its config differs from model {label}, "
                                 f"seed {seed} now); use another --out, or --overwrite to redo the runs")
            continue
        todo.append(rid)
    (out / "spec.yaml").write_text(yaml.safe_dump(grid.spec.model_dump(mode="json", exclude_none=True),
                                                  sort_keys=False))
    labels_of = {rid: label for rid, label, _ in grid.order}
    seed_of = {rid: seed for rid, _, seed in grid.order}
    console.print(f"[bold]{grid.title}[/bold]: {len(grid.labels)} models x {len(grid.seeds)} seeds = "
                  f"{len(grid.order)} runs; {len(grid.order) - len(todo)} already in {out}, {len(todo)} to run",
                  highlight=False)

    seconds: dict[str, list[float]] = {}
    data, data_key, ran = None, None, 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[eta]}"), console=console, transient=True,
                  disable=not todo) as progress:
        bar = progress.add_task("benchmark", total=len(grid.order), completed=len(grid.order) - len(todo),
                                eta=_fmt_eta(None))
        for i, rid in enumerate(todo):
            cfg, label, seed = grid.configs[rid], labels_of[rid], seed_of[rid]
            progress.update(bar, description=f"{label} seed {seed}")
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                key = json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)
                if key != data_key:  # once per grid (fixed split) or once per seed (resplit)
                    data, data_key = None, None
                    data = prepare_data(cfg)
                    data_key = key
                    t0, c0 = time.perf_counter(), time.process_time()  # a run's time excludes data preparation
                metrics, arrays, scenarios, tasks, split = _train_one(cfg, data)
                wall = time.perf_counter() - t0
                record = {"label": label, "model": cfg.model.name, "seed": seed, "tasks": tasks,
                          "scenarios": scenarios, "split": split, "wall_seconds": wall,
                          "cpu_seconds": time.process_time() - c0,
                          "config": _config_key(cfg), "metrics": metrics}
                _atomic_write(runs_dir / f"{rid}.npz", _npz_bytes(**arrays))  # scores first: JSON = done
                _atomic_write(runs_dir / f"{rid}.json", json.dumps(json_safe(record), indent=1).encode())
                (runs_dir / f"{rid}.failed.json").unlink(missing_ok=True)
                seconds.setdefault(label, []).append(wall)
                ran += 1
                macro = metrics[split]["macro_auc"]
                console.print(f"  {label:<16} seed {seed:<6} {split} macro AUC {macro:.4f}  ({wall:.0f}s)",
                              highlight=False)
            except Exception as err:  # noqa: BLE001  (one failed run must not cost the rest of the grid)
                wall = time.perf_counter() - t0
                seconds.setdefault(label, []).append(wall)
                message = f"{type(err).__name__}: {err}".splitlines()[0]
                failure = {"label": label, "model": cfg.model.name, "seed": seed, "error": message,
                           "traceback": traceback.format_exc(), "config": _config_key(cfg)}
                _atomic_write(runs_dir / f"{rid}.failed.json", json.dumps(failure, indent=1).encode())
                console.print(f"  [red]{label} seed {seed} failed[/red]: {message}", highlight=False)
            progress.update(bar, advance=1, eta=_fmt_eta(_eta(todo[i + 1:], seconds, labels_of)))

    records, failures = collect(out, grid)
    summary = write_report(out, grid, records, failures, markdown=markdown)
    return BenchmarkResult(out, records, failures, grid, ran, summary)


def collect(out: Path, grid: Grid) -> tuple[list[RunRecord], list[Failure]]:
    """The grid's finished runs (in grid order) and its failures, read back from the folder."""
    records, failures = [], []
    for rid, label, seed in grid.order:
        path = out / "runs" / f"{rid}.json"
        failed = out / "runs" / f"{rid}.failed.json"
        if path.is_file():
            records.append(_load_record(path))
        elif failed.is_file():
            raw = json.loads(failed.read_text())
            failures.append(Failure(rid, label, raw["model"], seed, raw["error"]))
    return records, failures
