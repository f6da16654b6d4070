"""Encoded data as a few contiguous tensors, and batches cut from them by slicing a permutation.

`BatchSource` is what the trainer reads training batches from; the in-memory `TensorTable` and the Parquet
stream (`data/stream.py`) implement it, and the trainer knows neither.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Protocol

import torch
from torch import Tensor

from msrec.errors import MsrecError


@dataclass
class Batch:
    """The one input every model takes. `sparse` ids are per-field vocabulary indices (0 = unknown);
    `lists` holds one padded [B, L] id tensor per multi-hot feature (0 = padding)."""

    sparse: Tensor  # [B, F] int32/int64
    dense: Tensor  # [B, Dd] float32 (standardized values, then missing flags)
    scenario: Tensor  # [B] int64 in 0..S-1
    lists: list[Tensor] = field(default_factory=list)  # each [B, L_i] int64
    labels: Tensor | None = None  # [B, T] float32
    # Rows per scenario id, counted on the host where the batch was cut: routing reads them instead of
    # copying counts back from the device (a sync per step on a GPU). None: routing counts itself.
    scenario_counts: list[int] | None = None
    # Distributed: the factor on this rank's mean loss that makes DDP's average over ranks the mean over the
    # global batch (a rank's share of the rows may be smaller than the others'). None: 1.
    loss_scale: float | None = None

    def __len__(self) -> int:
        return self.scenario.shape[0]

    def select(self, rows: Tensor) -> Batch:
        """The batch restricted to some rows (e.g. one scenario's)."""
        return Batch(sparse=self.sparse.index_select(0, rows), dense=self.dense.index_select(0, rows),
                     scenario=self.scenario.index_select(0, rows),
                     lists=[t.index_select(0, rows) for t in self.lists],
                     labels=None if self.labels is None else self.labels.index_select(0, rows))

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            sparse=self.sparse.to(device, non_blocking=True),
            dense=self.dense.to(device, non_blocking=True),
            scenario=self.scenario.to(device, non_blocking=True),
            lists=[t.to(device, non_blocking=True) for t in self.lists],
            labels=None if self.labels is None else self.labels.to(device, non_blocking=True),
            scenario_counts=self.scenario_counts,
            loss_scale=self.loss_scale,
        )


class BatchSource(Protocol):
    """Training rows as batches: `steps` batches per epoch of `batch_size` rows (the global batch), and
    `shard` this rank's part of them under torchrun (every rank takes the same number of steps)."""

    def __len__(self) -> int: ...

    def steps(self, batch_size: int) -> int: ...

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]: ...

    def shard(self, rank: int, world_size: int) -> BatchSource: ...


def check_global_batch(batch_size: int, world_size: int) -> None:
    if batch_size < world_size:
        raise MsrecError(f"train.batch_size={batch_size} is the global batch and must give each of the "
                         f"{world_size} ranks a row")


@dataclass
class TensorTable:
    """One encoded split. Rows are aligned across all tensors."""

    sparse: Tensor
    dense: Tensor
    scenario: Tensor
    lists: list[Tensor] = field(default_factory=list)
    labels: Tensor | None = None
    user: Tensor | None = None  # [N] int64 group ids for GAUC (not a model input)
    truth: Tensor | None = None  # [N, T] float32 true probabilities when the data knows them

    def __len__(self) -> int:
        return self.scenario.shape[0]

    @property
    def nbytes(self) -> int:
        total = 0
        for f in fields(self):
            value = getattr(self, f.name)
            for t in value if isinstance(value, list) else [value]:
                if t is not None:
                    total += t.numel() * t.element_size()
        return total

    def _gather(self, rows: Tensor | slice) -> dict:
        def pick(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            return t[rows] if isinstance(rows, slice) else t.index_select(0, rows)

        return {
            "sparse": pick(self.sparse),
            "dense": pick(self.dense),
            "scenario": pick(self.scenario),
            "lists": [pick(t) for t in self.lists],
            "labels": pick(self.labels),
        }

    def batch(self, rows: Tensor | slice) -> Batch:
        parts = self._gather(rows)
        return Batch(**parts, scenario_counts=torch.bincount(parts["scenario"]).tolist())

    def subset(self, rows: Tensor) -> TensorTable:
        parts = self._gather(rows)
        return TensorTable(**parts, user=None if self.user is None else self.user.index_select(0, rows),
                           truth=None if self.truth is None else self.truth.index_select(0, rows))

    @classmethod
    def concat(cls, tables: list[TensorTable]) -> TensorTable:
        if len(tables) == 1:
            return tables[0]

        def cat(ts: list[Tensor | None]) -> Tensor | None:
            return None if ts[0] is None else torch.cat(ts)  # type: ignore[arg-type]

        return cls(sparse=cat([t.sparse for t in tables]), dense=cat([t.dense for t in tables]),
                   scenario=cat([t.scenario for t in tables]),
                   lists=[torch.cat(parts) for parts in zip(*[t.lists for t in tables])],
                   labels=cat([t.labels for t in tables]), user=cat([t.user for t in tables]),
                   truth=cat([t.truth for t in tables]))

    def steps(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def shard(self, rank: int, world_size: int) -> TableShard:
        return TableShard(self, rank, world_size)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[Batch]:
        """Shuffled: gather rows of a seeded permutation, one `index_select` per tensor per batch.
        Not shuffled: zero-copy slices."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, n)
            yield self.batch(order[start:end] if order is not None else slice(start, end))


@dataclass
class TableShard:
    """One rank's part of an in-memory table: its contiguous share of every global batch of the same seeded
    permutation (so the ranks together take exactly the single-process batches). A share of n_r rows out of
    n gets `loss_scale = world * n_r / n`, so the mean over ranks of the scaled per-rank mean losses is the
    global-batch mean."""

    table: TensorTable
    rank: int
    world_size: int

    def __len__(self) -> int:
        return len(self.table)

    def steps(self, batch_size: int) -> int:
        """Every global batch that holds at least one row per rank."""
        check_global_batch(batch_size, self.world_size)
        n = len(self.table)
        steps = n // batch_size + (1 if n % batch_size >= self.world_size else 0)
        if steps == 0:
            raise MsrecError(f"train: {n} training rows cannot give each of the {self.world_size} ranks a row; "
                             "use fewer ranks")
        return steps

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        n = len(self.table)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, self.steps(batch_size) * batch_size, batch_size):
            rows = order[start:start + batch_size]
            share = rows.tensor_split(self.world_size)[self.rank]
            batch = self.table.batch(share)
            batch.loss_scale = self.world_size * len(share) / len(rows)
            yield batch

    def shard(self, rank: int, world_size: int) -> TableShard:
        raise MsrecError("a shard cannot be sharded again")
