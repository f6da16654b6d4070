"""Streaming statistics for the encoder's fit, merged chunk by chunk so memory follows the vocabulary size,
not the data's: value counts (vocabularies), moments (dense scalers), and the vocabulary lookup."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


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

    def as_text(self) -> None:
        """Values counted so far as integers, from now on as text (a later chunk of the column held text)."""
        self.parts = [part.set_column(0, "values", pc.cast(part["values"], pa.string())) for part in self.parts]

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
