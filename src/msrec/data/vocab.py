"""Streaming statistics for the encoder's fit, merged chunk by chunk so memory follows the vocabulary size,
not the data's: value counts (vocabularies), moments (dense scalers), the vocabulary lookup, and the stable
hash of hashed id columns (`data.hash_buckets`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from msrec.data.checks import Kind, id_kind


class ValueCounts:
    """Value counts merged across chunks; compacted as it grows. Null is counted as a value of its own only
    when asked (`data.missing_ids: category`: a blank id is learned like any other value)."""

    def __init__(self, count_null: bool = False) -> None:
        self.parts: list[pa.Table] = []
        self.count_null = count_null

    def add(self, values: pa.ChunkedArray | pa.Array) -> None:
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        vc = pc.value_counts(values if self.count_null else values.drop_null())
        self.parts.append(pa.table({"values": vc.field("values"), "counts": vc.field("counts")}))
        if len(self.parts) > 16:
            self.parts = [self._merged()]

    def merge_kind(self, kind: Kind | None, col: pa.ChunkedArray) -> Kind:
        """An id column's kind over the chunks seen so far: integers until a chunk holds text, then text for
        good (the values counted as integers are turned into text), as a fit on the whole column decides."""
        if kind is not None and col.null_count == len(col):
            return kind  # a chunk of blanks says nothing about the kind
        new = id_kind(col)
        if kind == "int" and new == "str":
            self.parts = [part.set_column(0, "values", pc.cast(part["values"], pa.string())) for part in self.parts]
        return "str" if kind == "str" else new

    def _merged(self) -> pa.Table:
        table = pa.concat_tables(self.parts)
        if len(self.parts) == 1:
            return table
        return table.group_by("values").aggregate([("counts", "sum")]).rename_columns(["values", "counts"])

    def vocabulary(self, min_freq: int) -> list:
        """Values seen at least `min_freq` times, sorted (null last)."""
        if not self.parts:
            return []
        table = self._merged()
        vocab = pc.filter(table["values"], pc.greater_equal(table["counts"], min_freq))
        return pc.take(vocab, pc.sort_indices(vocab)).to_pylist()


class Moments:
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

    def scaler(self) -> tuple[float, float]:
        """(mean, std); an empty or constant column scales by 1, never divides by zero."""
        std = float(np.sqrt(self.m2 / self.n)) if self.n else 1.0
        return (self.mean if self.n else 0.0), (std if std > 1e-12 else 1.0)


def lookup(values: pa.ChunkedArray | pa.Array, value_set: pa.Array) -> np.ndarray:
    """Vocabulary index per value, 1-based; 0 where unknown. A null matches a null in the vocabulary (the
    blank category), and is unknown otherwise."""
    idx = pc.index_in(values, value_set=value_set, skip_nulls=False)
    return pc.fill_null(pc.add(idx, 1), 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


FNV_OFFSET, FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def stable_hash(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A 64-bit hash of each value's text form (an integer: its decimal digits; a null: the empty text), the
    same in every process, run and machine (Python's `hash()` is salted per process): FNV-1a over the UTF-8
    bytes, then MurmurHash3's 64-bit finaliser to spread the low bits. Whole-column numpy: one pass per byte
    position of the longest value, never a Python step per row."""
    text = pc.fill_null(pc.cast(values, pa.large_string()), "")
    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    _, offsets_buf, data_buf = text.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64)[text.offset: text.offset + len(text) + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None and offsets[-1] > 0 else np.zeros(1, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(len(text), FNV_OFFSET, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(int(lengths.max(initial=0))):
            live = lengths > j
            byte = data[np.minimum(starts + j, len(data) - 1)].astype(np.uint64)
            h = np.where(live, (h ^ byte) * FNV_PRIME, h)
        for shift, mult in ((33, 0xFF51AFD7ED558CCD), (33, 0xC4CEB3FE1A85EC53)):
            h ^= h >> np.uint64(shift)
            h *= np.uint64(mult)
        h ^= h >> np.uint64(33)
    return h


def hashed(values: pa.ChunkedArray | pa.Array, buckets: int, blank_unknown: bool = False) -> np.ndarray:
    """Id per value in 1..buckets: any value has one, seen in training or not. A null (a blank id) hashes as
    the empty text, or is 0 (the unknown id) with `blank_unknown`."""
    out = (stable_hash(values) % np.uint64(buckets)).astype(np.int64) + 1
    if blank_unknown and values.null_count:
        out[pc.is_null(values).to_numpy(zero_copy_only=False)] = 0
    return out
