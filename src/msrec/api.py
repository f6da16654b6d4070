"""The Python API behind every CLI command: `msrec.train(config)`, `msrec.evaluate(run_dir)`, ..."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from rich.console import Console

from msrec.config import Config, load_config, parse_config
from msrec.data import prepare as data_prepare
from msrec.data.encode import Encoder
from msrec.data.io import read_table, write_table
from msrec.data.prepare import EncodedData, load_splits
from msrec.data.table import TensorTable
from msrec.errors import MsrecError
from msrec.models.registry import build_model, parse_options
from msrec.runs import Run, check_run_dir_free, default_run_dir, load_run, write_run
from msrec.train import distributed
from msrec.train.trainer import Trainer


@dataclass
class TrainResult:
    run_dir: Path | None
    metrics: dict
    model: torch.nn.Module
    encoder: Encoder
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # the val / test scores behind `metrics`


def as_config(config: Config | dict | str | Path, overrides: list[str] | None = None) -> Config:
    if isinstance(config, Config):
        return config if not overrides else as_config(config.to_dict(), overrides)
    if isinstance(config, dict):
        from msrec.config import apply_overrides

        return parse_config(apply_overrides(dict(config), overrides or []))
    return load_config(config, overrides)


def prepare_data(cfg: Config) -> EncodedData:
    """Every split of the configured data, encoded by an encoder fitted on the training rows only."""
    return data_prepare.prepare_data(cfg.data, cfg.train.seed)


def train(config: Config | dict | str | Path, out: str | Path | None = None, overrides: list[str] | None = None,
          overwrite: bool = False, save: bool = True, console: Console | None = None,
          data: EncodedData | None = None) -> TrainResult:
    """Train the configured model; write a run directory (unless `save=False`) and return its metrics.

    Under torchrun (WORLD_SIZE > 1) every rank calls this; they train together (DDP) and rank 0 alone
    writes the run directory (`run_dir` is None on the other ranks). See docs/distributed.md.
    """
    cfg = as_config(config, overrides)
    options = parse_options(cfg.model.name, cfg.model.options())  # fail on a bad option before loading data
    device = distributed.resolve_device(cfg.train.device, distributed.env_info())
    info = distributed.setup(cfg.train.dist_timeout, device)
    run_dir = Path(out) if out else (default_run_dir(cfg.model.name) if save else None)
    if save and info.is_main:
        check_run_dir_free(run_dir, overwrite)
    with distributed.peer_failures(info):
        return _train(cfg, options, run_dir, overwrite, save and info.is_main, console, data, device, info)


def _data_summary(data: EncodedData) -> dict[str, Any]:
    """What must agree across ranks: the rows of each split and a fingerprint of the fitted encoder."""
    encoder = json.dumps(data.encoder.to_dict(), sort_keys=True, default=str).encode()
    return {**{f"{split} rows": len(table) for split, table in [("train", data.train), *data.evaluation_splits().items()]},
            "encoder": hashlib.sha256(encoder).hexdigest()[:16]}


def _train(cfg: Config, options, run_dir: Path | None, overwrite: bool, save: bool, console: Console | None,
           data: EncodedData | None, device: torch.device, info: distributed.DistInfo) -> TrainResult:
    data = data or prepare_data(cfg)
    if info.enabled:  # the encoder fingerprint costs a pass over the vocabularies: only where ranks compare
        distributed.check_same_data(info, _data_summary(data), device)
    torch.manual_seed(cfg.train.seed)
    spec = data.encoder.spec()
    model = build_model(cfg.model.name, spec, options)
    trainer = Trainer(model, cfg.train, spec.scenarios, spec.tasks, console, device=device, dist=info)
    fit = trainer.fit(data.train, data.val)
    metrics: dict[str, Any] = {}
    scores: dict[str, torch.Tensor] = {}
    for split, table in data.evaluation_splits().items():
        metrics[split], scores[split] = trainer.scored_report(table)
    metrics["train"] = {"epochs": fit.epochs, "best_epoch": fit.best_epoch, "seconds": fit.seconds,
                        "samples_per_second": fit.samples_per_second,
                        "parameters": sum(p.numel() for p in model.parameters()), "history": fit.history}
    metrics["model"] = cfg.model.name
    if info.enabled:
        metrics["train"]["world_size"] = info.world_size
    model.cpu()  # the run is saved and served from the CPU
    if save:
        write_run(run_dir, cfg, data.encoder, model, metrics, overwrite)
    del trainer  # free the DDP wrapper (and gloo's pending work) now, not at interpreter shutdown
    distributed.barrier(info)  # ranks finish together (a rank leaving early can abort its peers' gloo threads)
    return TrainResult(run_dir if save else None, metrics, model, data.encoder, scores)


def _scorer(run: Run) -> Trainer:
    return Trainer(run.model, run.config.train.model_copy(update={"progress": False}),
                   run.encoder.scenario_names, run.encoder.schema.labels)


def _read_input(path: str | Path, run: Run) -> pa.Table:
    """A file to score or evaluate, with ids read as text where the run read them as text."""
    return read_table(path, string_columns=run.encoder.schema.text_columns())


def _score(run: Run, table: pa.Table, source: str, with_labels: bool) -> tuple[TensorTable, torch.Tensor]:
    encoded = run.encoder.transform(table, source, with_labels=with_labels)
    return encoded, _scorer(run).predict(encoded)


def evaluate(run: Run | str | Path, data: str | Path | None = None) -> dict:
    """Metrics of a saved run on a labelled file, or (without one) on its own configured test split (its
    validation split where it has no test split). A split held in its own file is the only file read."""
    run = run if isinstance(run, Run) else load_run(run)
    cfg = run.config.data
    if data is None and cfg.dataset is None and (cfg.test or cfg.val):
        data = cfg.test or cfg.val
    if data is None:  # a seeded split of one table: the whole table is read to rebuild it
        raw = load_splits(cfg, run.config.train.seed)
        split = "test" if "test" in raw.tables else "val"
        return _scorer(run).evaluate(run.encoder.transform(raw.tables[split], raw.sources[split]))
    return _scorer(run).evaluate(run.encoder.transform(_read_input(data, run), str(data)))


def predict(run_dir: str | Path, input_path: str | Path, output_path: str | Path | None = None,
            keep_columns: bool = True) -> pa.Table:
    """Score a file: one `score_<task>` column per task, appended to the input columns (or alone)."""
    run = load_run(run_dir)
    schema = run.encoder.schema
    table = _read_input(input_path, run)
    _, scores = _score(run, table, str(input_path), with_labels=False)
    out = table if keep_columns else table.select([])  # no columns, but the rows (scores are appended)
    for j, task in enumerate(schema.labels):
        out = out.append_column(f"score_{task}", pa.array(scores[:, j].numpy()))
    if output_path is not None:
        write_table(out, output_path)
    return out


def score_table(run: Run, table: pa.Table, source: str = "request") -> torch.Tensor:
    """Probabilities `[N, T]` for raw rows, with the run's own encoder (the serving path)."""
    return _score(run, table, source, with_labels=False)[1]


__all__ = ["EncodedData", "MsrecError", "TrainResult", "evaluate", "load_run", "predict", "prepare_data", "score_table", "train"]
