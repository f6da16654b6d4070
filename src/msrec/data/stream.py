"""Training data larger than memory: a Parquet file or folder read row group by row group.

Row groups are visited in a seeded random order, encoded as they arrive (by a background thread, so
reading and encoding overlap the training step), and mixed in a bounded shuffle buffer: rows are
shuffled within `buffer_rows`, not across the whole data. Memory holds at most the buffer plus the
row groups in flight, whatever the data's size. It is a `BatchSource`, like the in-memory `TensorTable`.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
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


class ParquetStream:
    def __init__(self, path: str | Path, columns: list[str], buffer_rows: int = 1_000_000, prefetch: int = 2):
        self.path = Path(path)
        self.columns = columns
        self.buffer_rows = buffer_rows
        self.prefetch = prefetch
        self.encoder: Encoder | None = None
        self.world_size = 1  # a shard reads batch_size // world_size rows per batch: its part of the global batch
        self.pieces: list[tuple[Path, int, int]] = []  # (file, row group, rows)
        for i, f in enumerate(parquet_files(path)):
            try:
                parquet = pq.ParquetFile(f)
            except (pa.ArrowInvalid, OSError) as err:
                raise MsrecError(f"{f}: cannot be read as Parquet ({err})") from None
            if i == 0:  # columns the data lacks are named by the encoder's own checks (user, truth: optional)
                present = set(parquet.schema_arrow.names)
                self.columns = [c for c in dict.fromkeys(columns) if c in present]
            meta = parquet.metadata
            self.pieces += [(f, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]

    def shard(self, rank: int, world_size: int) -> ParquetStream:
        """This rank's share of the row groups (for distributed training)."""
        out = ParquetStream.__new__(ParquetStream)
        out.__dict__.update(self.__dict__)
        out.pieces = self.pieces[rank::world_size]
        out.world_size = world_size
        return out

    def _local_batch(self, batch_size: int) -> int:
        check_global_batch(batch_size, self.world_size)
        return max(1, batch_size // self.world_size)

    def steps(self, batch_size: int) -> int:
        """This reader's batches per epoch (ranks differ; the trainer takes the fewest on every rank, and a
        rank with no row group makes that 0: an error on every rank at once, not a hang)."""
        return math.ceil(len(self) / self._local_batch(batch_size))

    def __len__(self) -> int:
        return sum(p[2] for p in self.pieces)

    def _read(self, piece: tuple[Path, int, int]) -> pa.Table:
        f, group, _ = piece
        try:
            return pq.ParquetFile(f).read_row_group(group, columns=self.columns)
        except (pa.ArrowInvalid, OSError, KeyError) as err:
            raise MsrecError(f"{f}: row group {group} cannot be read ({err})") from None

    def chunks(self) -> Iterator[pa.Table]:
        """Raw row groups in file order (for fitting the encoder in one streaming pass)."""
        for piece in self.pieces:
            yield self._read(piece)

    def _encoded(self, order: list[int]) -> Iterator[TensorTable]:
        """Encoded row groups in `order`, produced by a background thread `prefetch` groups ahead."""
        assert self.encoder is not None, "fit or attach an encoder first"
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce() -> None:
            try:
                for i in order:
                    if stop.is_set():
                        return
                    f, group, _ = self.pieces[i]
                    out.put(self.encoder.transform(self._read(self.pieces[i]), f"{f} (row group {group})",
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
        order = torch.randperm(len(self.pieces), generator=generator).tolist() if shuffle \
            else list(range(len(self.pieces)))
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
