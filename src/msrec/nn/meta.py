"""Networks whose weights are generated from a condition (the scenario representation `z`).

- `ConditionGroups`: rows that share the same condition ids (e.g. the ids of the scenario-indicator
  fields) form one group, so weights are generated once per group present in the batch, not once per
  row. With the default indicator (the scenario itself) that is once per scenario.
- `WeightGenerator`: `z -> flat vector -> (W_k, b_k)` for a K-layer MLP, full rank or low rank
  (`W_k = U_k diag(g_k(z)) V_k`, with `U_k`, `V_k` shared and only `g_k(z)` generated).
- `MetaMLP`: the generated MLP itself (the "meta unit" of M2M, the "dynamic weight" network).

A generated layer is applied to each group's own rows over the batch's tiles (nn.routing: rows sorted by
group, one batched matmul of each tile with its group's generated weights), so its cost grows with the
batch's rows, not with the number of groups; no Python loop over groups.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.errors import MsrecError
from msrec.nn.embedding import FeatureEmbedding
from msrec.nn.mlp import ACTIVATIONS, MLP, MLPOptions
from msrec.nn.routing import ScenarioRouting, exporting, tile_matmul


class ConditionGroups:
    """Groups the rows of a batch by their condition ids `[B, k]` (equal ids -> one group)."""

    def __init__(self, ids: Tensor):
        self.per_row = exporting()
        if self.per_row:
            # Traced for export: the number of distinct conditions is data-dependent (it would be baked
            # into the graph), so every row is its own group and weights are generated per row.
            self.inverse = self.first = torch.arange(ids.shape[0], device=ids.device)
            self.num_groups = ids.shape[0]
            self._routing = None
            return
        uniq, inverse, counts = torch.unique(ids, dim=0, return_inverse=True, return_counts=True)
        self.num_groups = uniq.shape[0]
        self.counts = counts.tolist()
        self.inverse = inverse  # [B] group of each row
        rows = torch.arange(ids.shape[0], device=ids.device)
        first = torch.full((self.num_groups,), ids.shape[0], dtype=torch.long, device=ids.device)
        self.first = first.scatter_reduce(0, inverse, rows, "amin")  # one representative row per group
        self._routing: ScenarioRouting | None = None

    @property
    def routing(self) -> ScenarioRouting:
        if self._routing is None:
            self._routing = ScenarioRouting(self.inverse, self.num_groups, self.counts)
        return self._routing

    def expand(self, per_group: Tensor) -> Tensor:
        """A per-group tensor `[U, ...]` repeated for each row: `[B, ...]`."""
        return per_group.index_select(0, self.inverse)

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """`x [B, ..., in] @ weight[group] + bias[group]`, with `weight [U, in, out]`, `bias [U, out]`."""
        if not self.per_row:
            routing = self.routing
            tiles = routing.pack(x)
            out = tile_matmul(tiles, routing.gather(weight), None if bias is None else routing.gather(bias))
            return routing.unpack(out)
        out = torch.einsum("b...i,bio->b...o", x, self.expand(weight))
        if bias is not None:
            out = out + self.expand(bias).view(x.shape[0], *([1] * (x.dim() - 2)), -1)
        return out

    def scale(self, x: Tensor, per_group: Tensor) -> Tensor:
        """`x [B, ..., r] * per_group[group]`, with `per_group [U, r]`."""
        return x * self.expand(per_group).view(x.shape[0], *([1] * (x.dim() - 2)), -1)


def condition(embedding: FeatureEmbedding, batch: Batch, fields: list[int]) -> tuple[ConditionGroups, Tensor]:
    """The condition groups of a batch and `z` once per group `[U, len(fields) * D]` (the embeddings of
    the scenario-indicator fields of each group's representative row)."""
    if not fields:
        raise MsrecError("model: this model needs at least one scenario-indicator feature (data.scenario_features)")
    ids = batch.sparse[:, fields].long()
    groups = ConditionGroups(ids)
    idx = ids.index_select(0, groups.first) + embedding.offsets[fields]
    return groups, embedding.lookup(idx).flatten(1)


@dataclass
class GeneratedLayer:
    """One generated layer for U groups: full rank `weight [U, in, out]`, or low rank `gain [U, r]`
    between the shared `left [in, r]` and `right [r, out]`."""

    weight: Tensor | None
    gain: Tensor | None
    left: Tensor | None
    right: Tensor | None
    bias: Tensor | None

    def apply(self, x: Tensor, groups: ConditionGroups) -> Tensor:
        if self.weight is not None:
            return groups.linear(x, self.weight, self.bias)
        out = groups.scale(x @ self.left, self.gain) @ self.right
        if self.bias is None:
            return out
        return out + groups.expand(self.bias).view(out.shape[0], *([1] * (out.dim() - 2)), -1)


class WeightGenerator(nn.Module):
    """`z [U, cond_dim] -> (W_k, b_k)` for the layers `dims[0] -> dims[1] -> ... -> dims[K]`.

    The generator's output, reshaped into the layers' parameters, is `base + scale * head(body(z))`:
    - `base` (the shared part) starts as an ordinary draw of those parameters (std 1/sqrt(fan_in)), so the
      generated network starts close to a plain shared MLP;
    - `scale` is fixed: each parameter's init size over sqrt(width of `body`). Without it one optimizer
      step on `head` moves a generated weight by about lr times the sum of the `body` activations (tens of
      times a plain weight's step), which made training plateau or jump on MovieLens; `head` starts at
      `delta_scale` of that size, so the condition-dependent part starts small.
    Low rank (`rank` set): only the gains `g_k(z)` of `W_k = U_k diag(g_k(z)) V_k` are generated
    (base 1), `U_k`, `V_k` are shared.
    """

    def __init__(self, cond_dim: int, dims: list[int], body: MLPOptions | None = None, rank: int | None = None,
                 bias: bool = True, delta_scale: float = 0.1):
        super().__init__()
        if len(dims) < 2:
            raise MsrecError("model: a generated network needs at least one layer (two widths)")
        self.dims = list(dims)
        self.rank = rank
        self.use_bias = bias
        self.sizes: list[tuple[int, int]] = []  # (weight part, bias part) per layer
        init: list[Tensor] = []
        scales: list[Tensor] = []
        self.left = nn.ParameterList()
        self.right = nn.ParameterList()
        for d_in, d_out in itertools.pairwise(dims):
            bound = 1 / math.sqrt(d_in)
            if rank is None:
                w_size = d_in * d_out
                init.append(torch.empty(w_size).uniform_(-math.sqrt(3) * bound, math.sqrt(3) * bound))
                scales.append(torch.full((w_size,), bound))
            else:
                w_size = rank
                self.left.append(nn.Parameter(torch.randn(d_in, rank) / math.sqrt(d_in)))
                self.right.append(nn.Parameter(torch.randn(rank, d_out) / math.sqrt(rank)))
                init.append(torch.ones(rank))
                scales.append(torch.ones(rank))
            b_size = d_out if bias else 0
            init.append(torch.zeros(b_size))
            scales.append(torch.full((b_size,), bound))
            self.sizes.append((w_size, b_size))
        self.body = MLP.of(cond_dim, body) if body is not None else MLP(cond_dim, [])
        total = sum(w + b for w, b in self.sizes)
        self.base = nn.Parameter(torch.cat(init))
        self.head = nn.Linear(self.body.out_dim, total, bias=False)
        nn.init.normal_(self.head.weight, std=delta_scale)
        self.register_buffer("scale", torch.cat(scales) / math.sqrt(self.body.out_dim), persistent=False)

    def forward(self, z: Tensor) -> list[GeneratedLayer]:
        flat = self.base + self.scale * self.head(self.body(z))  # [U, total]
        layers = []
        for k, part in enumerate(flat.split([w + b for w, b in self.sizes], dim=1)):
            w_size, b_size = self.sizes[k]
            w, b = part.split([w_size, b_size], dim=1)
            b = b if self.use_bias else None
            if self.rank is None:
                layers.append(GeneratedLayer(w.view(-1, self.dims[k], self.dims[k + 1]), None, None, None, b))
            else:
                layers.append(GeneratedLayer(None, w, self.left[k], self.right[k], b))
        return layers


class MetaMLP(nn.Module):
    """An MLP `dims[0] -> ... -> dims[K]` whose weights come from a `WeightGenerator` on `z` (whose hidden
    layers are `generator`; None: none); the activation runs between layers and, with `final_activation`,
    after the last one."""

    def __init__(self, cond_dim: int, dims: list[int], activation: str = "relu", generator: MLPOptions | None = None,
                 rank: int | None = None, bias: bool = True, final_activation: bool = True):
        super().__init__()
        self.generator = WeightGenerator(cond_dim, dims, generator, rank, bias)
        self.act = ACTIVATIONS[activation]()
        self.final_activation = final_activation
        self.out_dim = dims[-1]

    def forward(self, x: Tensor, z: Tensor, groups: ConditionGroups) -> Tensor:
        """`x [B, ..., dims[0]]`, `z [U, cond_dim]` one row per group of `groups`."""
        layers = self.generator(z)
        for k, layer in enumerate(layers):
            x = layer.apply(x, groups)
            if k < len(layers) - 1 or self.final_activation:
                x = self.act(x)
        return x
