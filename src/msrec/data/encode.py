"""Encoder: raw columns -> model inputs. Fitted on the training split only, saved as JSON beside the model.

- sparse ids: a vocabulary of values seen at least `min_freq` times; index 0 = unknown or rare.
- lists (multi-hot strings): split on their separator, one vocabulary, padded to a fixed length (0 = pad;
  unknown values are dropped).
- dense: standardized with the training mean and std; a missing value becomes 0 and sets a flag column.
- scenario: values -> ids 0..S-1 with their names kept; an unseen scenario is an error, never a guess.
- labels: checked to be 0/1 with nothing missing.

All of it is whole-column pyarrow / numpy work: no Python per row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from msrec.data.table import TensorTable
from msrec.errors import MsrecError
from msrec.schema import FeatureSpec, Schema

ENCODER_VERSION = 1


def _column(table: pa.Table, name: str, source: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise MsrecError(f"{source}: missing column `{name}` (columns: {', '.join(table.column_names)})")
    return table[name]


def _first_row(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


MISSING_TEXT = pa.array(["", "nan", "null"])  # lower-cased; "NA" and "none" stay values (a region; MovieLens's occupation "none")


def written_out_missing(col: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """In a text column, where a cell spells a missing value ("", "nan", "null", any case or spacing); None
    when no cell does (or the column is not text). Only the distinct values are normalised: one hash pass
    instead of two string copies of the column."""
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return None
    distinct = pc.unique(col)
    spelled = pc.filter(distinct, pc.is_in(pc.utf8_lower(pc.utf8_trim_whitespace(distinct)), value_set=MISSING_TEXT))
    return pc.is_in(col, value_set=spelled) if len(spelled) else None


def _check_no_missing(col: pa.ChunkedArray, name: str, source: str, what: str, row_offset: int = 0) -> None:
    """Null, NaN and, in text (ids are read from CSV as text), an empty cell or a written-out NaN/null are
    all missing: none of them is a usable id."""
    missing = pc.is_null(col, nan_is_null=True) if pa.types.is_floating(col.type) else pc.is_null(col)
    written_out = written_out_missing(col)
    if written_out is not None:
        missing = pc.or_kleene(missing, written_out)
    if pc.any(missing).as_py():
        raise MsrecError(f"{source}: column `{name}` row {row_offset + _first_row(missing) + 1}: missing {what}")


def _id_kind(col: pa.ChunkedArray) -> str:
    """Ids are compared as int64 when they are integers (also integral floats), otherwise as text."""
    if pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
        return "int"
    if pa.types.is_floating(col.type):
        filled = pc.fill_null(col, 0.0)
        return "int" if pc.all(pc.equal(pc.floor(filled), filled)).as_py() else "str"
    return "str"


def _as_kind(col: pa.ChunkedArray, kind: str, name: str, source: str, row_offset: int = 0) -> pa.ChunkedArray:
    target = pa.int64() if kind == "int" else pa.string()
    if col.type == target:
        return col
    try:
        return pc.cast(col, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if kind == "int":  # text ids that are not numbers, where training ids were: none can match
            bad = _first_bad_cast(col, target)
            where = f" row {row_offset + bad + 1}: {col[bad].as_py()!r}" if bad is not None else f" ({col.type})"
            raise MsrecError(f"{source}: column `{name}`{where} is not an integer id "
                             "(the training data had integer ids)") from None
        raise MsrecError(f"{source}: column `{name}` has type {col.type}; an id column holds one integer or "
                         "text value per row (declare lists under data.lists)") from None


def _first_bad_cast(col: pa.ChunkedArray, target: pa.DataType) -> int | None:
    """The first row Arrow itself cannot cast (error path only): bisection on prefixes, casts in C."""
    def casts(rows: int) -> bool:
        try:
            pc.cast(col.slice(0, rows), target)
            return True
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return False

    if casts(len(col)):
        return None
    good, bad = 0, len(col)  # the first `good` rows cast; the first `bad` rows do not
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if casts(mid) else (good, mid)
    return bad - 1


class _ValueCounts:
    """Value counts merged across chunks; compacted as it grows so memory follows the vocabulary size."""

    def __init__(self) -> None:
        self.parts: list[pa.Table] = []
        self.pending_rows = 0

    def add(self, values: pa.ChunkedArray | pa.Array) -> None:
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        vc = pc.value_counts(values.drop_null())
        self.parts.append(pa.table({"values": vc.field("values"), "counts": vc.field("counts")}))
        self.pending_rows += len(vc)
        if len(self.parts) > 16:
            self.parts = [self._merged()]

    def as_text(self) -> None:
        """Values counted so far as integers, from now on as text (a later chunk of the column held text)."""
        self.parts = [part.set_column(0, "values", pc.cast(part["values"], pa.string())) for part in self.parts]

    def _merged(self) -> pa.Table:
        table = pa.concat_tables(self.parts)
        if len(self.parts) == 1:
            return table
        return table.group_by("values").aggregate([("counts", "sum")]).rename_columns(["values", "counts"])

    def vocabulary(self, min_freq: int) -> list:
        if not self.parts:
            return []
        table = self._merged()
        vocab = pc.filter(table["values"], pc.greater_equal(table["counts"], min_freq))
        return pc.take(vocab, pc.sort_indices(vocab)).to_pylist()


class _Moments:
    """Count, mean and sum of squared deviations merged chunk by chunk (Chan et al.), NaN skipped."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, values: np.ndarray) -> None:
        ok = values[~np.isnan(values)]
        if not ok.size:
            return
        n, mean = ok.size, float(ok.mean())
        m2 = float(((ok - mean) ** 2).sum())
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta**2 * self.n * n / total
        self.n = total

    def scaler(self) -> dict[str, float]:
        std = float(np.sqrt(self.m2 / self.n)) if self.n else 1.0
        return {"mean": self.mean if self.n else 0.0, "std": std if std > 1e-12 else 1.0}


def _lookup(values: pa.ChunkedArray | pa.Array, vocab: list, kind: str) -> np.ndarray:
    """Vocabulary index per value, 1-based; 0 where unknown."""
    value_set = pa.array(vocab, type=pa.int64() if kind == "int" else pa.string())
    idx = pc.index_in(values, value_set=value_set)
    return pc.fill_null(pc.add(idx, 1), 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _numeric(col: pa.ChunkedArray, name: str, source: str, row_offset: int = 0) -> np.ndarray:
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type) or \
            pa.types.is_null(col.type):
        return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    try:
        return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = col.to_pylist()  # error path only: find the first value that is not a number
        for i, v in enumerate(values):
            try:
                if v is not None:
                    float(v)
            except (TypeError, ValueError):
                raise MsrecError(f"{source}: column `{name}` row {row_offset + i + 1}: {v!r} is not a number") from None
        raise MsrecError(f"{source}: column `{name}` has type {col.type}, expected numbers") from None


def _dense_values(col: pa.ChunkedArray, name: str, source: str, row_offset: int = 0) -> np.ndarray:
    """A dense column as float64; missing is NaN (imputed later), an infinity is an error: it would turn
    the column's scaler and every prediction into NaN."""
    values = _numeric(col, name, source, row_offset)
    infinite = np.isinf(values)
    if infinite.any():
        row = int(np.argmax(infinite))
        raise MsrecError(f"{source}: column `{name}` row {row_offset + row + 1}: {values[row]} is not a finite number")
    return values


def _split_lists(col: pa.ChunkedArray, sep: str, name: str, source: str) -> pa.ListArray:
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        try:
            col = pc.cast(col, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise MsrecError(f"{source}: column `{name}` must hold text lists separated by {sep!r}") from None
    col = pc.fill_null(col, "").combine_chunks()
    return pc.split_pattern(col, pattern=sep)


def _label_values(table: pa.Table, name: str, source: str, row_offset: int = 0) -> np.ndarray:
    """A label column as float64, checked to be 0/1 with nothing missing."""
    col = _column(table, name, source)
    _check_no_missing(col, name, source, "label", row_offset)
    values = _numeric(col, name, source, row_offset)
    bad = ~((values == 0) | (values == 1))
    if bad.any():
        row = int(np.argmax(bad))
        raise MsrecError(f"{source}: column `{name}` row {row_offset + row + 1}: label {values[row]:g} "
                         "is not 0 or 1")
    return values


def check_table(table: pa.Table, schema: Schema, source: str, with_labels: bool = True) -> None:
    """Validate raw rows against the schema before any split: a seeded split reorders rows, so errors
    found later would name a row of the split, not of the user's file. Columns first, then values."""
    needed = [*schema.sparse, *schema.lists, *schema.dense, schema.scenario, *(schema.labels if with_labels else [])]
    for name in dict.fromkeys(needed):
        _column(table, name, source)
    _check_no_missing(table[schema.scenario], schema.scenario, source, "scenario")
    for name in schema.sparse:
        _check_no_missing(table[name], name, source, "id")
    for name in schema.dense:
        _dense_values(table[name], name, source)
    if with_labels:
        for name in schema.labels:
            _label_values(table, name, source)


def _user_groups(col: pa.ChunkedArray) -> np.ndarray:
    """GAUC group per row: equal user ids share a group; a row without a user id (null, or empty text) is a
    group of its own, so anonymous rows are never pooled into one pretend user."""
    written_out = written_out_missing(col)
    if written_out is not None:
        col = pc.if_else(written_out, pa.scalar(None, col.type), col)
    encoded = pc.dictionary_encode(col.combine_chunks())
    codes = encoded.indices.to_numpy(zero_copy_only=False)  # float with NaN where null
    missing = np.isnan(codes) if codes.dtype.kind == "f" else np.zeros(len(codes), dtype=bool)
    groups = np.where(missing, 0, codes).astype(np.int64)
    groups[missing] = len(encoded.dictionary) + np.arange(int(missing.sum()))
    return groups


class Encoder:
    """fit / transform in the scikit-learn sense; `spec()` tells models the sizes they need."""

    def __init__(self, schema: Schema, min_freq: int = 1, list_max_len: int = 32):
        self.schema = schema
        self.min_freq = min_freq
        self.list_max_len = list_max_len
        self.sparse: dict[str, dict[str, Any]] = {}
        self.lists: dict[str, dict[str, Any]] = {}
        self.dense: dict[str, dict[str, float]] = {}
        self.scenario: dict[str, Any] = {}
        self.fitted = False

    # ----------------------------------------------------------------- fit
    def fit(self, table: pa.Table, source: str = "train") -> Encoder:
        return self.fit_chunks([table], source)

    def fit_chunks(self, chunks: Iterable[pa.Table], source: str = "train") -> Encoder:
        """Fit in one pass over chunks of the training data (e.g. Parquet row groups): value counts,
        dense moments and scenario values are merged chunk by chunk, so memory stays bounded."""
        s = self.schema
        counts: dict[str, _ValueCounts] = {}
        moments = {name: _Moments() for name in s.dense}
        max_len = dict.fromkeys(s.lists, 1)
        scenario_key = s.scenario + "\0scenario"  # the scenario column's kind and counts, apart from features
        scenario_values = counts[scenario_key] = _ValueCounts()
        kinds: dict[str, str] = {}
        offset = 0
        for table in chunks:
            for name in s.sparse:
                col = _column(table, name, source)
                _check_no_missing(col, name, source, "id", offset)
                kind = self._chunk_kind(kinds, counts, name, col)
                counts.setdefault(name, _ValueCounts()).add(_as_kind(col, kind, name, source, offset))
            for name, sep in s.lists.items():
                lists = _split_lists(_column(table, name, source), sep, name, source)
                flat = pc.utf8_trim_whitespace(lists.flatten())
                counts.setdefault(name, _ValueCounts()).add(pc.filter(flat, pc.not_equal(flat, "")))
                lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
                max_len[name] = max(max_len[name], int(lengths.max(initial=1)))
            for name in s.dense:
                moments[name].add(_dense_values(_column(table, name, source), name, source, offset))
            col = _column(table, s.scenario, source)
            _check_no_missing(col, s.scenario, source, "scenario", offset)
            kind = self._chunk_kind(kinds, counts, scenario_key, col)
            scenario_values.add(_as_kind(col, kind, s.scenario, source, offset))
            for name in s.labels:
                self._labels(table, name, source, offset)
            offset += table.num_rows
        if offset == 0:
            raise MsrecError(f"{source}: no training rows")
        for name in s.sparse:
            self.sparse[name] = {"kind": kinds[name], "vocab": counts[name].vocabulary(self.min_freq)}
        for name, sep in s.lists.items():
            self.lists[name] = {"sep": sep, "kind": "str", "max_len": int(min(self.list_max_len, max_len[name])),
                                "vocab": counts[name].vocabulary(self.min_freq)}
        for name in s.dense:
            self.dense[name] = moments[name].scaler()
        values = scenario_values.vocabulary(1)
        self.scenario = {"kind": kinds[scenario_key], "values": values, "names": [str(v) for v in values]}
        self.fitted = True
        return self

    @staticmethod
    def _chunk_kind(kinds: dict[str, str], counts: dict[str, _ValueCounts], key: str, col: pa.ChunkedArray) -> str:
        """An id column's kind over the chunks seen so far: integers until a chunk holds text, then text for
        good (the values counted as integers are turned into text), as a fit on the whole column decides."""
        kind = _id_kind(col)
        if kinds.get(key) == "int" and kind == "str":
            counts[key].as_text()
        if kinds.get(key) != "str":
            kinds[key] = kind
        return kinds[key]

    # ----------------------------------------------------------- transform
    def _labels(self, table: pa.Table, name: str, source: str, row_offset: int = 0) -> np.ndarray:
        return _label_values(table, name, source, row_offset)

    def transform(self, table: pa.Table, source: str = "data", with_labels: bool = True,
                  with_evaluation_columns: bool = True) -> TensorTable:
        """Encode rows. `with_evaluation_columns=False` leaves out what only evaluation reads (user groups for
        GAUC, ground truth for the oracle AUC): streamed training batches skip their cost."""
        if not self.fitted:
            raise MsrecError("encoder: transform called before fit")
        s = self.schema
        n = table.num_rows
        sparse = np.zeros((n, len(s.sparse)), dtype=np.int64)
        for j, name in enumerate(s.sparse):
            col = _column(table, name, source)
            _check_no_missing(col, name, source, "id")
            info = self.sparse[name]
            sparse[:, j] = _lookup(_as_kind(col, info["kind"], name, source), info["vocab"], info["kind"])
        id_dtype = torch.int32 if max((len(v["vocab"]) for v in self.sparse.values()), default=0) < 2**31 - 1 \
            else torch.int64
        lists = [self._pad_list(table, name, source) for name in s.lists]
        dense = np.zeros((n, 2 * len(s.dense)), dtype=np.float32)
        for j, name in enumerate(s.dense):
            values = _dense_values(_column(table, name, source), name, source)
            missing = np.isnan(values)
            info = self.dense[name]
            dense[:, j] = np.where(missing, 0.0, (values - info["mean"]) / info["std"])
            dense[:, len(s.dense) + j] = missing
        col = _column(table, s.scenario, source)
        _check_no_missing(col, s.scenario, source, "scenario")
        scen = _lookup(_as_kind(col, self.scenario["kind"], s.scenario, source), self.scenario["values"],
                       self.scenario["kind"]) - 1
        if (scen < 0).any():
            row = int(np.argmax(scen < 0))
            raise MsrecError(f"{source}: column `{s.scenario}` row {row + 1}: unknown scenario {col[row].as_py()!r} "
                             f"(known: {', '.join(self.scenario['names'])})")
        labels = truth = user = None
        if with_labels:
            labels = torch.from_numpy(np.stack([self._labels(table, c, source) for c in s.labels], 1)
                                      .astype(np.float32))
            if with_evaluation_columns and s.truth and all(c in table.column_names for c in s.truth.values()):
                truth = torch.from_numpy(np.stack(
                    [_numeric(table[s.truth[c]], s.truth[c], source) if c in s.truth else np.full(n, np.nan)
                     for c in s.labels], 1).astype(np.float32))
        if with_evaluation_columns and s.user and s.user in table.column_names:
            user = torch.from_numpy(_user_groups(table[s.user]))
        return TensorTable(
            sparse=torch.from_numpy(sparse).to(id_dtype),
            dense=torch.from_numpy(dense),
            scenario=torch.from_numpy(scen),
            lists=lists,
            labels=labels,
            user=user,
            truth=truth,
        )

    def _pad_list(self, table: pa.Table, name: str, source: str) -> torch.Tensor:
        info = self.lists[name]
        lists = _split_lists(_column(table, name, source), info["sep"], name, source)
        flat = pc.utf8_trim_whitespace(lists.flatten())
        idx = _lookup(flat, info["vocab"], "str")
        offsets = lists.offsets.to_numpy().astype(np.int64)
        offsets = offsets - offsets[0]
        lengths = np.diff(offsets)
        rows = np.repeat(np.arange(len(lengths)), lengths)
        known = idx > 0  # unknown values are dropped before truncation, so they take no slot
        rows, idx = rows[known], idx[known]
        counts = np.bincount(rows, minlength=len(lengths))
        pos = np.arange(len(idx)) - np.repeat(np.cumsum(counts) - counts, counts)
        keep = pos < info["max_len"]
        out = np.zeros((len(lengths), info["max_len"]), dtype=np.int64)
        out[rows[keep], pos[keep]] = idx[keep]
        return torch.from_numpy(out)

    # -------------------------------------------------------------- models
    def spec(self) -> FeatureSpec:
        s = self.schema
        return FeatureSpec(
            sparse_fields=list(s.sparse),
            sparse_vocab=[len(self.sparse[c]["vocab"]) + 1 for c in s.sparse],
            list_fields=list(s.lists),
            list_vocab=[len(self.lists[c]["vocab"]) + 1 for c in s.lists],
            dense_dim=2 * len(s.dense),
            scenario_fields=[s.sparse.index(c) for c in s.scenario_features],
            scenarios=list(self.scenario["names"]),
            tasks=list(s.labels),
        )

    @property
    def scenario_names(self) -> list[str]:
        return list(self.scenario["names"])

    # ------------------------------------------------------------- storage
    def to_dict(self) -> dict[str, Any]:
        return {"version": ENCODER_VERSION, "schema": self.schema.to_dict(), "min_freq": self.min_freq,
                "list_max_len": self.list_max_len, "sparse": self.sparse, "lists": self.lists,
                "dense": self.dense, "scenario": self.scenario}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "encoder") -> Encoder:
        if not isinstance(d, dict):
            raise MsrecError(f"{source}: not a valid encoder file (expected a JSON object)")
        try:
            if d.get("version") != ENCODER_VERSION:
                raise MsrecError(f"{source}: encoder version {d.get('version')!r}, expected {ENCODER_VERSION}")
            enc = cls(Schema(**d["schema"]), d["min_freq"], d["list_max_len"])
            enc.sparse, enc.lists, enc.dense, enc.scenario = d["sparse"], d["lists"], d["dense"], d["scenario"]
            missing = [c for c in enc.schema.sparse if c not in enc.sparse]
            if missing or not enc.scenario.get("names"):
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
