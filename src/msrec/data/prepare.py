"""From a `data:` config section to encoded splits: read, check, split, fit the encoder on the training rows
only, encode. In memory, or (`data.streaming`) training rows left on disk as a Parquet stream."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from msrec.config import DataConfig
from msrec.data.checks import ColumnError, as_written, check_table
from msrec.data.datasets import load_builtin
from msrec.data.encode import Encoder
from msrec.data.io import read_table
from msrec.data.stream import ParquetFiles, ParquetStream
from msrec.data.table import BatchSource, TensorTable
from msrec.errors import MsrecError
from msrec.schema import Schema


@dataclass
class RawSplits:
    schema: Schema
    tables: dict[str, pa.Table]  # "train", "val" and optionally "test"
    sources: dict[str, str]  # split -> what to call it in error messages


def resolve_schema(cfg: DataConfig, defaults: dict | None = None) -> Schema:
    d = defaults or {}

    def pick(key: str, fallback):
        value = getattr(cfg, key)
        return value if value is not None else d.get(key, fallback)

    scenario = pick("scenario", None)  # Schema refuses None, naming data.scenario
    return Schema(
        sparse=list(pick("sparse", [])),
        dense=list(pick("dense", [])),
        lists=dict(pick("lists", {})),
        scenario=scenario,
        scenario_features=list(pick("scenario_features", scenario if isinstance(scenario, list) else [scenario])),
        labels=list(pick("labels", ["label"])),
        user=pick("user", None),
        truth=dict(pick("truth", {})),
    )


def split_rows(n: int, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Seeded random split of row indices; each part keeps the original row order."""
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.round(np.cumsum(fractions)[:-1] * n).astype(int)
    return [np.sort(part) for part in np.split(perm, bounds)]


def _check_split_scenarios(full: pa.Table, train_rows: np.ndarray, other_rows: np.ndarray, schema: Schema,
                           source: str, split: str) -> None:
    """A scenario whose few rows all fell outside the training split cannot be encoded: say so, naming a
    row of the user's file (not of the split). With several scenario columns, each column's values are
    checked (a combination unseen in training falls back to its parent level where it can)."""
    for scenario in schema.scenario_columns:
        known = pc.unique(full[scenario].take(pa.array(train_rows)))
        unseen = pc.invert(pc.is_in(full[scenario].take(pa.array(other_rows)), value_set=known))
        if pc.any(unseen).as_py():
            i = int(pc.index(unseen, True).as_py())
            row = int(other_rows[i])
            raise ColumnError(source, scenario, row, f"scenario {as_written(full[scenario], row)} has no rows in "
                              f"the training split (all in the {split} split); give it more rows or change "
                              "data.split / data.split_seed")


def load_splits(cfg: DataConfig, seed: int) -> RawSplits:
    split_seed = cfg.split_seed if cfg.split_seed is not None else seed
    if cfg.dataset is not None:
        tables, defaults = load_builtin(cfg.dataset, cfg.path, cfg.options)
        schema = resolve_schema(cfg, defaults)
        sources = {k: f"{cfg.dataset}[{k}]" for k in ("all", "train", "val", "test")}
    else:
        schema = resolve_schema(cfg)
        text_columns = schema.text_columns()
        tables, sources = {}, {}
        for split in ("train", "val", "test"):
            path = getattr(cfg, split)
            if path:
                tables[split] = read_table(path, string_columns=text_columns)
                sources[split] = str(path)
        sources["all"] = sources["train"]
    for split, table in tables.items():  # before any split, so that errors name rows of the file
        check_table(table, schema, sources[split], missing_ids=cfg.missing_ids)
    if set(tables) == {"train"}:  # one file, as a built-in dataset: the seeded train/val/test split of data.split
        tables["all"] = tables.pop("train")
    if "all" in tables:
        full = tables.pop("all")
        parts = split_rows(full.num_rows, cfg.split, split_seed)
        for split, rows in zip(("train", "val", "test"), parts):
            if len(rows):
                if split != "train" and len(parts[0]):
                    _check_split_scenarios(full, parts[0], rows, schema, sources["all"], split)
                tables[split] = full.take(pa.array(rows))
                sources[split] = f"{sources['all']} ({split} split)"
    elif "val" not in tables:
        full = tables["train"]
        frac_val = cfg.split[1] / (cfg.split[0] + cfg.split[1])
        train_rows, val_rows = split_rows(full.num_rows, (1 - frac_val, frac_val), split_seed)
        if len(train_rows) and len(val_rows):
            _check_split_scenarios(full, train_rows, val_rows, schema, sources["train"], "val")
        tables["train"], tables["val"] = full.take(pa.array(train_rows)), full.take(pa.array(val_rows))
        sources["val"] = f"{sources['train']} (val split)"
        sources["train"] = f"{sources['train']} (train split)"
    if tables["train"].num_rows == 0 or "val" not in tables or tables["val"].num_rows == 0:
        raise MsrecError(f"{sources.get('train')}: too few rows to hold a training and a validation split")
    return RawSplits(schema, tables, {k: v for k, v in sources.items() if k in tables})


@dataclass
class EncodedData:
    """Every split encoded by one encoder fitted on the training rows. `train` is a batch source (in memory
    or streamed); the evaluation splits are in memory."""

    encoder: Encoder
    train: BatchSource
    val: TensorTable
    test: TensorTable | None = None

    @property
    def evaluated(self) -> str:
        """The split a run's final metrics are taken on: test where there is one."""
        return "test" if self.test is not None else "val"

    def evaluation_splits(self) -> dict[str, TensorTable]:
        return {"val": self.val, **({"test": self.test} if self.test is not None else {})}


def prepare_data(cfg: DataConfig, seed: int) -> EncodedData:
    """Load the splits, fit the encoder on the training split only, encode every split."""
    if cfg.streaming:
        return _prepare_streaming(cfg)
    raw = load_splits(cfg, seed)
    encoder = _encoder(cfg, raw.schema).fit(raw.tables["train"], raw.sources["train"])
    tables = {split: encoder.transform(t, raw.sources[split]) for split, t in raw.tables.items()}
    return EncodedData(encoder, tables["train"], tables["val"], tables.get("test"))


def _prepare_streaming(cfg: DataConfig) -> EncodedData:
    """Training rows stay on disk (read by row group); the encoder is fitted in one streaming pass;
    validation and test splits are read into memory."""
    schema = resolve_schema(cfg)
    wanted = [*schema.feature_columns(), *schema.labels]  # user and truth are read for evaluation only
    files = ParquetFiles(cfg.train, wanted)
    encoder = _encoder(cfg, schema).fit_chunks(files.chunks(), str(cfg.train))
    stream = ParquetStream(files, encoder, cfg.shuffle_buffer)
    text_columns = schema.text_columns()
    splits = {split: encoder.transform(read_table(path, string_columns=text_columns), str(path))
              for split in ("val", "test") if (path := getattr(cfg, split))}
    return EncodedData(encoder, stream, splits["val"], splits.get("test"))


def _encoder(cfg: DataConfig, schema: Schema) -> Encoder:
    return Encoder(schema, cfg.min_freq, cfg.list_max_len, cfg.missing_ids, cfg.hash_buckets, cfg.min_scenario_rows)
