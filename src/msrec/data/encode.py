"""Encoder: raw columns -> model inputs. Fitted on the training split only, saved as JSON beside the model.

- sparse ids: a vocabulary of values seen at least `min_freq` times; index 0 = unknown or rare. A missing
  id follows `data.missing_ids`: an error, unknown (0), or a category of its own (a null in the vocabulary).
- lists (multi-hot strings): split on their separator, one vocabulary, padded to a fixed length (0 = pad;
  unknown values are dropped).
- dense: standardized with the training mean and std; a missing value becomes 0 and sets a flag column.
- scenario: values (or combinations of several columns' values) -> ids 0..S-1 with their names kept
  (`data/scenarios.py`); an unseen scenario is an error, never a guess.
- labels: checked to be 0/1 with nothing missing.

All of it is whole-column pyarrow / numpy work: no Python per row. The fitted state is one small dataclass
per column; `encoder.json` (format 2) is that state as JSON:

    {"version": 2, "schema": {...}, "min_freq": 1, "list_max_len": 32, "missing_ids": "category",
     "sparse": {"<col>": {"kind": "int" | "str", "vocab": [v1, v2, ..., null?]},    # id of vi = i (1-based)
                "<hashed col>": {"kind": "int" | "str", "buckets": N}},              # id 1..N (vocab.hashed)
     "lists": {"<col>": {"sep": "|", "max_len": 3, "vocab": ["a", "b"]}},
     "dense": {"<col>": {"mean": 0.0, "std": 1.0}},
     "scenario": {"kind": "int" | "str", "values": [...], "names": ["..."]}}           # id of values[i] = i

A scenario of several columns (a hierarchy) is stored as `data/scenarios.py` describes; files of a single
scenario column are unchanged.

Format 1 (msrec 0.1) is the same without `missing_ids` (a missing id was an error) and with a `kind` per list.
A hashed column (`data.hash_buckets`) has `buckets` instead of `vocab`: no vocabulary is counted or stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from msrec.data.checks import (
    Kind,
    MissingIds,
    as_kind,
    column,
    dense_values,
    ids,
    label_values,
    numeric,
    split_lists,
    user_groups,
)
from msrec.data.scenarios import Scenario, ScenarioColumn, ScenarioCounter, grown, scenario_from_dict, unseen
from msrec.data.table import TensorTable
from msrec.data.vocab import Moments, ValueCounts, hashed, lookup
from msrec.errors import MsrecError
from msrec.schema import FeatureSpec, Schema

ENCODER_VERSION = 2
READABLE_VERSIONS = (1, 2)


def _value_set(values: list, kind: Kind) -> pa.Array:
    return pa.array(values, type=pa.int64() if kind == "int" else pa.string())


@dataclass
class SparseColumn:
    """An id column: values compared as int64 or text; id i + 1 is `vocab[i]` (sorted; None = blank), or, hashed,
    ids 1..buckets from the value's stable hash (`vocab` empty)."""

    kind: Kind
    vocab: list
    buckets: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in get_args(Kind) or not isinstance(self.vocab, list) or not (
                self.buckets is None or isinstance(self.buckets, int) and self.buckets >= 1):
            raise ValueError(f"kind {self.kind!r} / vocab of type {type(self.vocab).__name__} / buckets {self.buckets}")

    @property
    def size(self) -> int:
        """Rows of its embedding: the ids and the unknown id 0."""
        return (self.buckets or len(self.vocab)) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **({"buckets": self.buckets} if self.buckets else {"vocab": self.vocab})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SparseColumn:
        return cls(d["kind"], [], d["buckets"]) if "buckets" in d else cls(d["kind"], d["vocab"])

    @cached_property
    def value_set(self) -> pa.Array:  # built once, not per transformed chunk
        return _value_set(self.vocab, self.kind)


@dataclass
class ListColumn:
    """A multi-hot text column: split on `sep`, at most `max_len` known values per row."""

    sep: str
    max_len: int
    vocab: list[str]

    @cached_property
    def value_set(self) -> pa.Array:
        return _value_set(self.vocab, "str")


@dataclass
class DenseColumn:
    mean: float
    std: float


class Encoder:
    """fit / transform in the scikit-learn sense; `spec()` tells models the sizes they need."""

    def __init__(self, schema: Schema, min_freq: int = 1, list_max_len: int = 32,
                 missing_ids: MissingIds = "category", hash_buckets: dict[str, int] | None = None,
                 min_scenario_rows: int = 0):
        self.schema = schema
        self.min_scenario_rows = min_scenario_rows
        self.hash_buckets = dict(hash_buckets or {})
        if unknown := [c for c in self.hash_buckets if c not in schema.sparse]:
            raise MsrecError(f"data.hash_buckets: {', '.join(map(repr, unknown))} is not a sparse column "
                             f"(sparse: {', '.join(schema.sparse)})")
        self.min_freq = min_freq
        self.list_max_len = list_max_len
        self.missing_ids = missing_ids
        self.sparse: dict[str, SparseColumn] = {}
        self.lists: dict[str, ListColumn] = {}
        self.dense: dict[str, DenseColumn] = {}
        self.scenario: Scenario = ScenarioColumn("str", [], [])  # fit sets every column
        self.fitted = False

    # ----------------------------------------------------------------- fit
    def fit(self, table: pa.Table, source: str = "train") -> Encoder:
        return self.fit_chunks([table], source)

    def fit_chunks(self, chunks: Iterable[pa.Table], source: str = "train") -> Encoder:
        """Fit in one pass over chunks of the training data (e.g. Parquet row groups): value counts,
        dense moments and scenario values are merged chunk by chunk, so memory stays bounded."""
        s = self.schema
        counts = {name: ValueCounts(count_null=self.missing_ids == "category") for name in s.sparse}
        list_counts = {name: ValueCounts() for name in s.lists}
        moments = {name: Moments() for name in s.dense}
        max_len = dict.fromkeys(s.lists, 1)
        scenarios = ScenarioCounter(s, self.min_scenario_rows)
        kinds: dict[str, Kind] = {}
        offset = 0
        for table in chunks:
            scenarios.add(table, source, offset)
            for name in s.sparse:
                col = ids(column(table, name, source), name, source, self.missing_ids, offset)
                kinds[name] = counts[name].merge_kind(kinds.get(name), col)
                values = as_kind(col, kinds[name], name, source, offset)
                if name not in self.hash_buckets:  # a hashed column counts nothing
                    counts[name].add(values)
            for name, sep in s.lists.items():
                lists = split_lists(column(table, name, source), sep, name, source)
                flat = pc.utf8_trim_whitespace(lists.flatten())
                list_counts[name].add(flat.filter(pc.not_equal(flat, "")))
                lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
                max_len[name] = max(max_len[name], int(lengths.max(initial=1)))
            for name in s.dense:
                moments[name].add(dense_values(column(table, name, source), name, source, offset))
            for name in s.labels:
                label_values(table, name, source, offset)
            offset += table.num_rows
        if offset == 0:
            raise MsrecError(f"{source}: no training rows")
        self.sparse = {name: SparseColumn(kinds[name], [], self.hash_buckets[name]) if name in self.hash_buckets
                       else SparseColumn(kinds[name], counts[name].vocabulary(self.min_freq)) for name in s.sparse}
        self.lists = {name: ListColumn(sep, int(min(self.list_max_len, max_len[name])),
                                       list_counts[name].vocabulary(self.min_freq)) for name, sep in s.lists.items()}
        self.dense = {name: DenseColumn(*moments[name].scaler()) for name in s.dense}
        self.scenario = scenarios.result()
        self.fitted = True
        return self

    # ----------------------------------------------------------- transform
    def transform(self, table: pa.Table, source: str = "data", with_labels: bool = True,
                  with_evaluation_columns: bool = True) -> TensorTable:
        """Encode rows. `with_evaluation_columns=False` leaves out what only evaluation reads (user groups for
        GAUC, ground truth for the oracle AUC): streamed training batches skip their cost."""
        if not self.fitted:
            raise MsrecError("encoder: transform called before fit")
        s = self.schema
        n = table.num_rows
        scenario = self.scenario.ids(table, s.scenario, source)
        sparse = np.zeros((n, len(s.sparse)), dtype=np.int64)
        for j, name in enumerate(s.sparse):
            info = self.sparse[name]
            col = as_kind(ids(column(table, name, source), name, source, self.missing_ids), info.kind, name, source)
            sparse[:, j] = hashed(col, info.buckets, self.missing_ids == "unknown") if info.buckets \
                else lookup(col, info.value_set)
        id_dtype = torch.int32 if max((c.size for c in self.sparse.values()), default=0) < 2**31 else torch.int64
        lists = [self._pad_list(table, name, source) for name in s.lists]
        dense = np.zeros((n, 2 * len(s.dense)), dtype=np.float32)
        for j, name in enumerate(s.dense):
            values = dense_values(column(table, name, source), name, source)
            missing = np.isnan(values)
            scaler = self.dense[name]
            dense[:, j] = np.where(missing, 0.0, (values - scaler.mean) / scaler.std)
            dense[:, len(s.dense) + j] = missing
        labels = truth = user = None
        if with_labels:
            labels = torch.from_numpy(np.stack([label_values(table, c, source) for c in s.labels], 1)
                                      .astype(np.float32))
            if with_evaluation_columns and s.truth and all(c in table.column_names for c in s.truth.values()):
                truth = torch.from_numpy(np.stack(
                    [numeric(table[s.truth[c]], s.truth[c], source) if c in s.truth else np.full(n, np.nan)
                     for c in s.labels], 1).astype(np.float32))
        if with_evaluation_columns and s.user and s.user in table.column_names:
            user = torch.from_numpy(user_groups(table[s.user]))
        return TensorTable(sparse=torch.from_numpy(sparse).to(id_dtype), dense=torch.from_numpy(dense),
                           scenario=torch.from_numpy(scenario), lists=lists, labels=labels, user=user, truth=truth)

    def _pad_list(self, table: pa.Table, name: str, source: str) -> torch.Tensor:
        info = self.lists[name]
        lists = split_lists(column(table, name, source), info.sep, name, source)
        idx = lookup(pc.utf8_trim_whitespace(lists.flatten()), info.value_set)
        offsets = lists.offsets.to_numpy().astype(np.int64)
        offsets = offsets - offsets[0]
        lengths = np.diff(offsets)
        rows = np.repeat(np.arange(len(lengths)), lengths)
        known = idx > 0  # unknown values are dropped before truncation, so they take no slot
        rows, idx = rows[known], idx[known]
        counts = np.bincount(rows, minlength=len(lengths))
        pos = np.arange(len(idx)) - np.repeat(np.cumsum(counts) - counts, counts)
        keep = pos < info.max_len
        out = np.zeros((len(lengths), info.max_len), dtype=np.int64)
        out[rows[keep], pos[keep]] = idx[keep]
        return torch.from_numpy(out)

    def grown(self, table: pa.Table, source: str = "data", fields: list[str] | None = None) -> Encoder:
        """A copy that also knows `table`'s scenarios unseen in training and the unseen values of the sparse
        `fields` (default: the scenario-indicator features), appended: every old id is unchanged (msrec extend)."""
        enc = Encoder.from_dict(self.to_dict(), source)
        enc.scenario = grown(self.scenario, table, self.schema, source)
        for name in self.schema.scenario_features if fields is None else fields:
            info = self.sparse[name]
            if not info.buckets:  # a hashed column has no vocabulary to grow
                col = as_kind(ids(column(table, name, source), name, source, self.missing_ids), info.kind, name, source)
                new = unseen(col, info.value_set, keep_null=self.missing_ids == "category")
                enc.sparse[name] = SparseColumn(info.kind, info.vocab + new)
        return enc

    # -------------------------------------------------------------- models
    def spec(self) -> FeatureSpec:
        s = self.schema
        return FeatureSpec(
            sparse_fields=list(s.sparse),
            sparse_vocab=[self.sparse[c].size for c in s.sparse],
            list_fields=list(s.lists),
            list_vocab=[len(self.lists[c].vocab) + 1 for c in s.lists],
            dense_dim=2 * len(s.dense),
            scenario_fields=[s.sparse.index(c) for c in s.scenario_features],
            scenarios=list(self.scenario.names),
            tasks=list(s.labels),
            levels=self.scenario.levels(),
        )

    @property
    def scenario_names(self) -> list[str]:
        return list(self.scenario.names)

    def id_types(self) -> dict[str, pa.DataType]:
        """The Arrow type each id column (and the scenario) is compared as: int64 where training ids were
        integers (also when read from CSV as text), so a service can check them and an output keep them."""
        types = {name: pa.int64() if c.kind == "int" else pa.string() for name, c in self.sparse.items()}
        return {**types, **{c: pa.int64() if kind == "int" else pa.string() for c, kind, _ in self.scenario_columns()}}

    def scenario_columns(self) -> list[tuple[str, Kind, list]]:
        """Each scenario column with the kind and the training values of its own (level) vocabulary."""
        if isinstance(self.scenario, ScenarioColumn):
            return [(self.schema.scenario, self.scenario.kind, self.scenario.values)]
        return [(lv.column, lv.kind, lv.values) for lv in self.scenario.levels_]

    # ------------------------------------------------------------- storage
    def to_dict(self) -> dict[str, Any]:
        def plain(columns: dict) -> dict[str, dict[str, Any]]:
            return {name: asdict(c) for name, c in columns.items()}

        return {"version": ENCODER_VERSION, "schema": self.schema.to_dict(), "min_freq": self.min_freq,
                "list_max_len": self.list_max_len, "missing_ids": self.missing_ids,
                "sparse": {name: c.to_dict() for name, c in self.sparse.items()},
                "lists": plain(self.lists), "dense": plain(self.dense), "scenario": self.scenario.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "encoder") -> Encoder:
        """Formats 1 and 2 (a format 1 file was written when a missing id was an error: it stays one)."""
        if not isinstance(d, dict):
            raise MsrecError(f"{source}: not a valid encoder file (expected a JSON object)")
        if d.get("version") not in READABLE_VERSIONS:
            raise MsrecError(f"{source}: encoder version {d.get('version')!r}, expected one of {READABLE_VERSIONS}")
        try:
            missing_ids = d["missing_ids"] if d["version"] >= 2 else "error"
            if missing_ids not in get_args(MissingIds):
                raise ValueError(f"missing_ids {missing_ids!r}")
            enc = cls(Schema(**d["schema"]), d["min_freq"], d["list_max_len"], missing_ids)
            enc.sparse = {name: SparseColumn.from_dict(c) for name, c in d["sparse"].items()}
            enc.lists = {name: _read(ListColumn, c) for name, c in d["lists"].items()}
            enc.dense = {name: _read(DenseColumn, c) for name, c in d["dense"].items()}
            enc.scenario = scenario_from_dict(d["scenario"], enc.schema)
            missing = [c for c in enc.schema.sparse if c not in enc.sparse]
            if missing or not enc.scenario.names:
                raise MsrecError(f"{source}: incomplete encoder (no vocabulary for {missing or 'the scenario'})")
            enc.spec()  # every part a model needs is there and well formed
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise MsrecError(f"{source}: not a valid encoder file ({type(err).__name__}: {err})") from None
        enc.fitted = True
        return enc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> Encoder:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()), str(path))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise MsrecError(f"{path}: not valid JSON ({err})") from None


def _read(cls: type, d: dict[str, Any]) -> Any:
    """One column's state from its JSON object (keys of other formats, such as 0.1's list `kind`, ignored)."""
    return cls(**{f.name: d[f.name] for f in fields(cls)})
