"""The Python API behind every CLI command: `msrec.train(config)`, `msrec.evaluate(run_dir)`, ...

Orchestration only: config -> data -> model -> fit -> metrics -> run directory, and a run directory ->
scores. How ranks share the work under torchrun is the training session's and the trainer's business.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from rich.console import Console

from msrec.config import Config, load_config, parse_config
from msrec.data import prepare as data_prepare
from msrec.data.checks import ColumnError, id_kind, is_text, user_groups
from msrec.data.encode import Encoder
from msrec.data.io import is_parquet, read_table, table_writer, write_table
from msrec.data.prepare import EncodedData, load_splits
from msrec.data.stream import parquet_files
from msrec.data.table import TensorTable
from msrec.errors import MsrecError
from msrec.models.registry import build_model, parse_options
from msrec.runs import (
    METRICS_FORMAT,
    Run,
    absolute_data_paths,
    checkpoint_dir,
    default_run_dir,
    load_run,
    prepare_run_dir,
    write_run,
)
from msrec.schema import Schema
from msrec.train import tracking
from msrec.train.checkpoint import Checkpointer, identity
from msrec.train.distributed import session as training_session
from msrec.train.predict import Scorer
from msrec.train.sharding import check as check_sharding
from msrec.train.trainer import EpochHook, Trainer

CHUNK_ROWS = 262_144  # rows read and scored at a time from a Parquet input (predict_file, evaluate)


@dataclass(repr=False)
class TrainResult:
    """What `train` returns: the run directory (None when nothing was written), the metrics written to its
    metrics.json, the trained model (on the CPU), its encoder, and the val / test scores behind the metrics."""

    run_dir: Path | None
    metrics: dict
    model: torch.nn.Module
    encoder: Encoder
    scores: dict[str, torch.Tensor] = field(default_factory=dict)

    def __repr__(self) -> str:
        """Short: the run, the model and the headline metrics (not the score tensors)."""
        split = "test" if "test" in self.metrics else "val"
        block = self.metrics.get(split, {})

        def num(x: float | None) -> str:
            return "nan" if x is None or math.isnan(x) else f"{x:.4f}"

        return (f"TrainResult(run_dir={str(self.run_dir) if self.run_dir else None!r}, "
                f"model={self.metrics.get('model')!r}, {split}_macro_auc={num(block.get('macro_auc'))}, "
                f"{split}_auc={num(block.get('overall', {}).get('auc'))}, "
                f"best_epoch={self.metrics.get('train', {}).get('best_epoch')})")


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
          data: EncodedData | None = None, resume: bool = False, epoch_hooks: list[EpochHook] | None = None
          ) -> TrainResult:
    """Train the configured model, write its run directory and return its metrics.

    - `config`: a `Config`, a dict of `data` / `model` / `train` sections, or a YAML file (its relative data
      paths are read against the file's folder); `overrides`: `--set` items such as `"train.epochs=3"`.
    - `out`: the run directory. Without it: `runs/<model>-<YYYYmmdd-HHMMSS>` under the current folder
      (`-2`, `-3`, ... appended when taken). An existing non-empty folder is an error unless `overwrite`
      (replaced only once training succeeded).
    - `save=False`: write nothing (`run_dir` is None).
    - `console`: where the progress bar and the epoch log go (default: stderr, unless `train.progress` is off).
    - `data`: data already prepared by `prepare_data(cfg)`, to train several models on one encoding.
    - `resume`: continue the interrupted run in `out` from its newest checkpoint (`train.checkpoint`), which
      must come from the same config and data; without a checkpoint, train from the start. Without `resume`, an
      interrupted run in `out` is an error (`overwrite` starts over). See docs/checkpoints.md.
    - `epoch_hooks`: called after each epoch's validation with its history row and validation report (tuning's
      pruning); `train.tracking` adds its own (docs/tracking.md).

    Under torchrun (WORLD_SIZE > 1) every rank calls this; they train together (DDP) and rank 0 alone
    writes the run directory (`run_dir` is None on the other ranks). See docs/distributed.md.
    """
    cfg = as_config(config, overrides)
    options = parse_options(cfg.model.name, cfg.model.options())  # fail on a bad option before loading data
    with training_session(cfg.train) as session:
        check_sharding(cfg.train, session)  # before any data is read
        out_dir, run_dir, resuming = None, None, False
        if resume and (out is None or not save):
            raise MsrecError("resume needs the run directory to continue (--out) and save=True")
        if save:  # checked before training, not after; rank 0 decides for all (every rank writes checkpoints)
            out_dir, resuming = session.decide(lambda: _output(cfg, out, overwrite, resume))
            run_dir = out_dir if session.writes_run else None  # rank 0 alone writes the run
        data = data or prepare_data(cfg)
        torch.manual_seed(cfg.train.seed)
        spec = data.encoder.spec()
        model = build_model(cfg.model.name, spec, options)
        ckpt = cfg.train.checkpoint
        checkpoints = None
        if out_dir is not None and (ckpt.every_steps or ckpt.every_minutes):
            checkpoints = Checkpointer(checkpoint_dir(out_dir), ckpt, identity(absolute_data_paths(cfg), data),
                                       session)
        trainer = Trainer(model, cfg.train, spec.scenarios, spec.tasks, console, session, checkpoints)
        tracker = tracking.start(cfg, run_dir, session.writes_run)  # None: train.tracking is off
        trainer.epoch_hooks += [*(epoch_hooks or []), *([tracker.epoch_end] if tracker else [])]
        try:
            split_metrics, scores = trainer.fit_and_score(data)
        except BaseException:
            if tracker:
                tracker.close("FAILED")
            raise
        metrics = {"format": METRICS_FORMAT, **split_metrics, "model": cfg.model.name}
        model.cpu()  # the run is saved and served from the CPU
        if run_dir is not None:
            write_run(run_dir, cfg, data.encoder, model, metrics, overwrite or resuming)
            if checkpoints is not None and not ckpt.keep_after:
                checkpoints.clear()
        if tracker:
            tracker.finish(metrics, run_dir)
    return TrainResult(run_dir, metrics, model, data.encoder, scores)


def _output(cfg: Config, out: str | Path | None, overwrite: bool, resume: bool) -> tuple[Path, bool]:
    """The run directory and whether training continues from its checkpoints (msrec.runs.prepare_run_dir)."""
    run_dir = Path(out) if out else default_run_dir(cfg.model.name)
    return run_dir, prepare_run_dir(run_dir, overwrite, resume)


def _scorer(run: Run) -> Scorer:
    return Scorer(run.model, run.encoder.scenario_names, list(run.encoder.schema.labels),
                  run.config.train.eval_batch_size, run.config.train.precision, levels=run.encoder.spec().levels)


def _read_input(path: str | Path, run: Run) -> pa.Table:
    """A file to score or evaluate, with ids read as text where the run read them as text."""
    return read_table(path, string_columns=run.encoder.schema.text_columns())


def evaluate(run: Run | str | Path, data: str | Path | None = None) -> dict:
    """Metrics of a saved run on a labelled file, or (without one) on its own configured test split (its
    validation split where it has no test split), from any folder. A split held in its own file is the only
    file read. The report is a metrics.json split block (`{"tasks": {...}, "macro_auc", "overall"}`)."""
    run = run if isinstance(run, Run) else load_run(run)
    cfg = run.config.data
    if data is None and cfg.dataset is None and (cfg.test or cfg.val):
        data = cfg.test or cfg.val
    if data is None:  # a seeded split of one table: the whole table is read to rebuild it
        raw = load_splits(cfg, run.config.train.seed)
        split = "test" if "test" in raw.tables else "val"
        return _scorer(run).evaluate(run.encoder.transform(raw.tables[split], raw.sources[split]))
    if is_parquet(data):
        return _evaluate_chunks(run, data, CHUNK_ROWS)
    return _scorer(run).evaluate(run.encoder.transform(_read_input(data, run), str(data)))


def _evaluate_chunks(run: Run, path: str | Path, chunk_rows: int) -> dict:
    """`evaluate` of a Parquet file or folder read `chunk_rows` at a time: memory holds one chunk's features and
    every row's scores, labels and scenario, not the whole input. GAUC's user groups are formed over the whole
    user column (read alone), so that a user's rows in different chunks are one group."""
    scorer, kept, has_user = _scorer(run), [], []
    user = run.encoder.schema.user
    for _, table, encoded in _encoded_chunks(run, path, chunk_rows, with_labels=True):
        kept.append((encoded.scenario, encoded.labels, encoded.truth, scorer.predict(encoded)))
        has_user.append(bool(user) and user in table.column_names)
    if not kept:
        raise MsrecError(f"{path}: the file has no data rows")
    scenario, labels, truth, scores = (None if part[0] is None else torch.cat(part) for part in zip(*kept, strict=True))
    groups = None
    if all(has_user):
        users = pa.chunked_array([pq.read_table(f, columns=[user])[user] for f in parquet_files(path)])
        groups = torch.from_numpy(user_groups(users))
    table = TensorTable(sparse=torch.zeros(len(scenario), 0, dtype=torch.long), dense=torch.zeros(len(scenario), 0),
                        scenario=scenario, labels=labels, user=groups, truth=truth)
    return scorer.report(table, scores)


def _integer_ids(table: pa.Table, schema: Schema) -> pa.Table:
    """Id columns read from a CSV as text (so that "007" keeps its spelling) back as integers where every
    value is a canonical integer: the output's ids are written as the input wrote them, unquoted."""
    for name in schema.text_columns():
        if name not in schema.lists and is_text(table[name]) and id_kind(table[name]) == "int":
            table = table.set_column(table.column_names.index(name), name, pc.cast(table[name], pa.int64()))
    return table


def predict(run_dir: str | Path, input_path: str | Path, output_path: str | Path | None = None,
            keep_columns: bool = True) -> pa.Table:
    """Score a file: one `score_<task>` column per task, appended to the input columns (or alone)."""
    run = load_run(run_dir)
    schema = run.encoder.schema
    table = _read_input(input_path, run)
    scores = score_table(run, table, str(input_path))
    out = table.select([])  # no columns, but the rows (scores are appended)
    if keep_columns:
        out = table if is_parquet(input_path) else _integer_ids(table, schema)
    for j, task in enumerate(schema.labels):
        out = out.append_column(f"score_{task}", pa.array(scores[:, j].numpy()))
    if output_path is not None:
        write_table(out, output_path)
    return out


def predict_file(run_dir: str | Path, input_path: str | Path, output_path: str | Path, keep_columns: bool = True,
                 chunk_rows: int = CHUNK_ROWS) -> int:
    """Score a file into `output_path` (CSV or Parquet) as `predict` does; returns the rows scored. A Parquet input
    (a file or a folder of files) is read, scored and written `chunk_rows` rows at a time, so that memory holds
    one chunk whatever the input's size; a CSV input is read whole. The output appears only once complete."""
    if not is_parquet(input_path):
        return predict(run_dir, input_path, output_path, keep_columns).num_rows
    run = load_run(run_dir)
    scorer, tasks, rows = _scorer(run), run.encoder.schema.labels, 0
    with table_writer(output_path) as write:
        for file, table, encoded in _encoded_chunks(run, input_path, chunk_rows, with_labels=False):
            scores = scorer.predict(encoded)
            out = table if keep_columns else table.select([])
            for j, task in enumerate(tasks):
                out = out.append_column(f"score_{task}", pa.array(scores[:, j].numpy()))
            try:
                write(out)
            except (ValueError, pa.ArrowInvalid):
                raise MsrecError(f"{file}: its columns differ from those of {input_path}'s first file") from None
            rows += table.num_rows
        if rows == 0:
            raise MsrecError(f"{input_path}: the file has no data rows")
    return rows


def _encoded_chunks(run: Run, path: str | Path, chunk_rows: int,
                    with_labels: bool) -> Iterator[tuple[Path, pa.Table, TensorTable]]:
    """A Parquet file or folder `chunk_rows` rows at a time: each chunk's file, raw rows and encoding; a bad
    value is named by its file and its row counted over that file."""
    for file in parquet_files(path):
        for offset, table in _parquet_chunks(file, chunk_rows):
            try:
                encoded = run.encoder.transform(table, str(file), with_labels=with_labels)
            except ColumnError as err:
                raise ColumnError(str(file), err.column, err.row, err.problem, row_offset=offset) from None
            yield file, table, encoded


def _parquet_chunks(file: Path, chunk_rows: int) -> Iterator[tuple[int, pa.Table]]:
    """A Parquet file's rows, `chunk_rows` at a time, each with the number of rows before it."""
    try:
        batches = pq.ParquetFile(file).iter_batches(batch_size=chunk_rows)
        offset = 0
        for batch in batches:
            yield offset, pa.Table.from_batches([batch])
            offset += batch.num_rows
    except (pa.ArrowInvalid, OSError) as err:
        raise MsrecError(f"{file}: cannot be read as Parquet: {err}") from None


def score_table(run: Run, table: pa.Table, source: str = "request") -> torch.Tensor:
    """Probabilities `[N, T]` for raw rows, with the run's own encoder (the serving path)."""
    return _scorer(run).predict(run.encoder.transform(table, source, with_labels=False))


__all__ = ["EncodedData", "MsrecError", "TrainResult", "evaluate", "load_run", "predict", "predict_file", "prepare_data",
           "score_table", "train"]
