"""Encoded data as a few contiguous tensors, and batches cut from them by slicing a permutation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor


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
        )


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
