"""Training data larger than memory: a Parquet file or folder read row group by row group.

Row groups are visited in a seeded random order, encoded as they arrive (by a background thread, so
reading and encoding overlap the training step), and mixed in a bounded shuffle buffer: rows are
shuffled within `buffer_rows`, not across the whole data. Memory holds at most the buffer plus the
row groups in flight, whatever the data's size.

`ParquetFiles(path, columns)` indexes the row groups and yields raw chunks (the encoder is fitted on them);
`ParquetStream(files, encoder)` is the `BatchSource`, like the in-memory `TensorTable`.
"""

from __future__ import annotations

import copy
import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from msrec.data.encode import Encoder
from msrec.data.table import Batch, TensorTable, check_global_batch
from msrec.errors import MsrecError

_DONE = object()


def parquet_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
    else:
        files = [path]
    if not files or not path.exists():
        raise MsrecError(f"{path}: no Parquet files found")
    return files


@dataclass(frozen=True)
class RowGroup:
    file: Path
    index: int
    rows: int


class ParquetFiles:
    """The row groups of a Parquet file or folder (read from the footers, no data read), and the raw chunks
    they hold: what the encoder is fitted on, and what a `ParquetStream` encodes."""

    def __init__(self, path: str | Path, columns: list[str]):
        self.path = Path(path)
        self.columns = list(dict.fromkeys(columns))
        self.groups: list[RowGroup] = []
        for i, f in enumerate(parquet_files(path)):
            try:
                parquet = pq.ParquetFile(f)
            except (pa.ArrowInvalid, OSError) as err:
                raise MsrecError(f"{f}: cannot be read as Parquet ({err})") from None
            if i == 0:  # columns the data lacks are named by the encoder's own checks (user, truth: optional)
                present = set(parquet.schema_arrow.names)
                self.columns = [c for c in self.columns if c in present]
            meta = parquet.metadata
            self.groups += [RowGroup(f, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]

    def __len__(self) -> int:
        return sum(g.rows for g in self.groups)

    def part(self, rank: int, world_size: int) -> ParquetFiles:
        """Every `world_size`-th row group from `rank` on: one rank's share."""
        out = copy.copy(self)
        out.groups = self.groups[rank::world_size]
        return out

    def read(self, group: RowGroup) -> pa.Table:
        try:
            return pq.ParquetFile(group.file).read_row_group(group.index, columns=self.columns)
        except (pa.ArrowInvalid, OSError, KeyError) as err:
            raise MsrecError(f"{group.file}: row group {group.index} cannot be read ({err})") from None

    def chunks(self) -> Iterator[pa.Table]:
        """Raw row groups in file order (for fitting the encoder in one streaming pass)."""
        for group in self.groups:
            yield self.read(group)


class ParquetStream:
    """Training batches from `files`, encoded by a fitted `encoder` (a `BatchSource`). A shard reads
    batch_size // world_size rows per batch: its part of the global batch."""

    def __init__(self, files: ParquetFiles, encoder: Encoder, buffer_rows: int = 1_000_000, prefetch: int = 2,
                 world_size: int = 1):
        if not encoder.fitted:
            raise MsrecError("ParquetStream: fit the encoder first (Encoder.fit_chunks(files.chunks()))")
        self.files, self.encoder = files, encoder
        self.buffer_rows, self.prefetch, self.world_size = buffer_rows, prefetch, world_size

    def shard(self, rank: int, world_size: int) -> ParquetStream:
        """This rank's share of the row groups (for distributed training)."""
        return ParquetStream(self.files.part(rank, world_size), self.encoder, self.buffer_rows, self.prefetch,
                             world_size)

    def _local_batch(self, batch_size: int) -> int:
        check_global_batch(batch_size, self.world_size)
        return max(1, batch_size // self.world_size)

    def steps(self, batch_size: int) -> int:
        """This reader's batches per epoch (ranks differ; the trainer takes the fewest on every rank, and a
        rank with no row group makes that 0: an error on every rank at once, not a hang)."""
        return math.ceil(len(self) / self._local_batch(batch_size))

    def __len__(self) -> int:
        return len(self.files)

    def _encoded(self, order: list[int]) -> Iterator[TensorTable]:
        """Encoded row groups in `order`, produced by a background thread `prefetch` groups ahead."""
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce() -> None:
            try:
                for i in order:
                    if stop.is_set():
                        return
                    group = self.files.groups[i]
                    out.put(self.encoder.transform(self.files.read(group), f"{group.file} (row group {group.index})",
                                                   with_evaluation_columns=False))
                out.put(_DONE)
            except BaseException as err:  # noqa: BLE001  (re-raised in the consumer thread)
                out.put(err)

        worker = threading.Thread(target=produce, daemon=True)
        worker.start()
        try:
            while (item := out.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    out.get_nowait()
                except queue.Empty:
                    worker.join(0.01)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[Batch]:
        batch_size = self._local_batch(batch_size)
        groups = len(self.files.groups)
        order = torch.randperm(groups, generator=generator).tolist() if shuffle else list(range(groups))
        buffer: list[TensorTable] = []
        buffered = 0
        for chunk in self._encoded(order):
            buffer.append(chunk)
            buffered += len(chunk)
            if buffered >= self.buffer_rows:
                table = TensorTable.concat(buffer)
                full = len(table) - len(table) % batch_size
                perm = torch.randperm(len(table), generator=generator) if shuffle else torch.arange(len(table))
                for start in range(0, full, batch_size):
                    yield table.batch(perm[start:start + batch_size])
                rest = perm[full:]
                buffer = [table.subset(rest)] if len(rest) else []
                buffered = len(rest)
        if buffered:
            table = TensorTable.concat(buffer)
            yield from table.batches(batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last)
