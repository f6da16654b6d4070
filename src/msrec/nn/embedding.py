"""One fused embedding table for every sparse field and multi-hot list (per-field offsets into it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.nn.backbone import BackboneOptions, build_backbone
from msrec.nn.grow import field_sizes, grow_table
from msrec.schema import FeatureSpec

# The dtype new tables are stored in: `model.table_dtype`, set by `models.registry.build_model` around a model's
# construction, so that a bf16 table is allocated as bf16 (building it in fp32 and casting would peak at 1.5x).
_TABLE_DTYPE: ContextVar[torch.dtype] = ContextVar("table_dtype", default=torch.float32)


@contextmanager
def tables_stored_in(dtype: torch.dtype) -> Iterator[None]:
    """Every `FeatureEmbedding` built inside stores its table in `dtype` (its lookups still give float32)."""
    token = _TABLE_DTYPE.set(dtype)
    try:
        yield
    finally:
        _TABLE_DTYPE.reset(token)


def table_offsets(sizes: list[int]) -> Tensor:
    """Where each field's rows start in one shared table holding the fields' vocabularies end to end."""
    return torch.tensor([0, *sizes[:-1]], dtype=torch.long).cumsum(0) if sizes else torch.zeros(0, dtype=torch.long)

class FeatureEmbedding(nn.Module):
    """Embeds a batch as `[B, F, D]` field vectors (sparse fields, then mean-pooled lists).

    One `nn.Embedding` holds all fields; a field's id `k` lives at row `offset[field] + k`. One lookup per
    batch instead of one per field. `flat()` gives the model input `e`: field vectors concatenated with
    the dense values, through the model's interaction backbone (`model.backbone`, msrec.nn.backbone) when it
    is not the plain concatenation; `flat_dim` is its width. Every model reads its input here, so every
    model sits on the backbone it is given.

    The table may be stored in bfloat16 (`model.table_dtype`: half the memory); `lookup` always gives float32,
    so everything above computes as before and the row-sparse optimizer rounds the updated rows back.

    Built with dense gradients (any torch optimizer can train it); the trainer switches every table to sparse
    gradients for a row-sparse `train.embedding_optimizer` (msrec.train.optim), which changes no output and
    no weight: a step's backward then yields only the rows its batch looked up. The table is read through
    lookups only (`table(ids)`), never as a whole, so that its gradient stays row-sparse.
    """

    def __init__(self, spec: FeatureSpec, dim: int, backbone: BackboneOptions | None = None,
                 input_fields: list[int] | None = None, init_std: float = 1e-2):
        """`input_fields`: the embedded fields that enter `flat()` (default: all of them)."""
        super().__init__()
        self.dim = dim
        self.num_sparse = len(spec.sparse_fields)
        self.num_lists = len(spec.list_fields)
        self.dense_dim = spec.dense_dim
        sizes = [*spec.sparse_vocab, *spec.list_vocab]
        self.register_buffer("offsets", table_offsets(sizes), persistent=False)
        self.table = nn.Embedding(max(1, sum(sizes)), dim, dtype=_TABLE_DTYPE.get())
        nn.init.normal_(self.table.weight, std=init_std)
        self.register_buffer("input_fields", None if input_fields is None else
                             torch.tensor(input_fields, dtype=torch.long), persistent=False)
        num_input = self.num_fields if input_fields is None else len(input_fields)
        self.flat_dim = num_input * dim + self.dense_dim
        self.backbone = build_backbone(backbone, num_input, dim, self.dense_dim, spec.num_scenarios)
        if self.backbone is not None:
            self.flat_dim = self.backbone.out_dim

    def grow_vocab(self, sizes: list[int], source: list[Tensor]) -> None:
        """Grows each field's rows to `sizes` (sparse fields, then lists), new ids copying the field's rows
        `source[f]`; old ids keep their vectors, the later fields' offsets move (msrec.nn.grow)."""
        old = field_sizes(self.offsets, self.table.weight.shape[0])
        grown = grow_table(self.table.weight, old, sizes, source)
        self.table.weight = nn.Parameter(grown, requires_grad=self.table.weight.requires_grad)
        self.table.num_embeddings = grown.shape[0]
        self.offsets = table_offsets(sizes).to(self.offsets.device)

    def lookup(self, ids: Tensor) -> Tensor:
        """The table's rows for `ids` (any shape) as float32, whatever the table is stored in."""
        rows = self.table(ids)
        return rows if rows.dtype == torch.float32 else rows.float()

    @property
    def num_fields(self) -> int:
        return self.num_sparse + self.num_lists

    def fields(self, batch: Batch) -> Tensor:
        parts = []
        if self.num_sparse:
            parts.append(self.lookup(batch.sparse.long() + self.offsets[: self.num_sparse]))
        for j, ids in enumerate(batch.lists):
            offset = self.offsets[self.num_sparse + j]
            mask = (ids > 0).unsqueeze(-1).float()
            pooled = (self.lookup(ids + offset) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            parts.append(pooled.unsqueeze(1))
        return torch.cat(parts, 1) if parts else batch.dense.new_zeros(len(batch), 0, self.dim)

    def flat(self, batch: Batch, fields: Tensor | None = None) -> Tensor:
        """The model input `e [B, flat_dim]` from the batch's fields (or the given `[B, F, D]` ones)."""
        fields = self.fields(batch) if fields is None else fields
        if self.input_fields is not None:
            fields = fields.index_select(1, self.input_fields)
        if self.backbone is None:
            return torch.cat([fields.flatten(1), batch.dense], 1)
        return self.backbone(fields, batch.dense, batch.scenario)

    def select(self, batch: Batch, field_indices: list[int]) -> Tensor:
        """Embeddings of a few sparse fields only (e.g. the scenario-indicator features `z`), flattened."""
        idx = batch.sparse[:, field_indices].long() + self.offsets[field_indices]
        return self.lookup(idx).flatten(1)
