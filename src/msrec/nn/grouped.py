"""Per-group parameters (a scenario's experts, a cluster's tower) applied to each row's own group with
batched tensor ops: no Python loop over groups, no per-row copy of a weight matrix.

    pack:    rows [B, ...]  ->  a padded block [G, N, ...]     (N = rows of the largest group in the batch)
    layer:   h[g] @ W[g] + b[g] for every group at once        (one batched matmul, weights stacked [G, ...])
    unpack:  block [G, N, ...]  ->  rows [B, ...] in the batch's order

A group's parameters see, and get gradient from, its own rows only; padding rows are computed and dropped.
The cost is G * N rows' work instead of B: 1x when the groups are equal, G x at worst (one group holding
nearly every row).

Export (TorchScript / ONNX tracing): N is data-dependent and would be baked into the graph, so there each
row gathers its own group's weights (`W[group]`, one matmul per row): the same results, for any batch.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msrec.nn.mlp import ACTIVATIONS, MLPOptions
from msrec.nn.routing import exporting


class GroupedRows:
    """Where each row of a batch sits in the padded per-group block. `group [B]` int64 in `0..G-1`; `counts`:
    rows per group when the caller knows them on the host (`Batch.scenario_counts`), else counted here."""

    def __init__(self, group: Tensor, num_groups: int, counts: list[int] | None = None):
        self.group = group
        self.num_groups = num_groups
        self.traced = exporting()
        if self.traced:
            return
        onehot = F.one_hot(group, num_groups)  # [B, G]
        slot = (onehot.cumsum(0) * onehot).sum(1) - 1  # each row's position within its group (row order kept)
        if counts is None:
            counts = onehot.sum(0).tolist()
        self.size = max([*counts, 1])
        self.position = group * self.size + slot  # index of each row in the flattened [G * N] block

    def pack(self, x: Tensor) -> Tensor:
        """`[B, ...]` -> `[G, N, ...]` (zeros where a group has fewer than N rows)."""
        block = x.new_zeros(self.num_groups * self.size, *x.shape[1:]).index_copy(0, self.position, x)
        return block.view(self.num_groups, self.size, *x.shape[1:])

    def unpack(self, block: Tensor) -> Tensor:
        """Inverse of `pack`: `[G, N, ...]` -> `[B, ...]`."""
        return block.flatten(0, 1).index_select(0, self.position)


class GroupedMLP(nn.Module):
    """`copies` MLPs per group (e.g. each scenario's experts, each cluster's tower): the hidden layers of
    `options` (activation and dropout after each), then a linear output layer of width `out_dim` if given.
    Layer weights are stacked `[G, copies, in, out]`, initialised as `nn.Linear`'s.

    With `shared_centre`, group g's layer is `W_g * W` (element-wise) with bias `b_g + b`: a centre `W, b`
    shared by every group and each group's own `W_g, b_g`, starting at ones and zeros (STAR's topology), so
    training starts from one shared network. `forward(x [B, in], rows)` gives `[B, copies, width]`.
    No batch normalization: it would mix the groups' rows (options with `batch_norm` are refused)."""

    def __init__(self, in_dim: int, options: MLPOptions, num_groups: int, copies: int = 1,
                 out_dim: int | None = None, shared_centre: bool = False):
        super().__init__()
        if options.batch_norm:
            raise ValueError("per-group layers have no batch normalization (it would mix the groups' rows)")
        dims = [in_dim, *options.hidden, *([out_dim] if out_dim is not None else [])]
        self.num_hidden = len(options.hidden)
        self.out_dim = dims[-1]
        self.weight = nn.ParameterList()
        self.bias = nn.ParameterList()
        self.centre_weight = nn.ParameterList()
        self.centre_bias = nn.ParameterList()
        for a, b in pairwise(dims):
            bound = 1 / math.sqrt(a)
            def draw(*shape: int, bound: float = bound) -> nn.Parameter:
                return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))
            if shared_centre:
                self.centre_weight.append(draw(copies, a, b))
                self.centre_bias.append(draw(copies, b))
                self.weight.append(nn.Parameter(torch.ones(num_groups, copies, a, b)))
                self.bias.append(nn.Parameter(torch.zeros(num_groups, copies, b)))
            else:
                self.weight.append(draw(num_groups, copies, a, b))
                self.bias.append(draw(num_groups, copies, b))
        self.act = ACTIVATIONS[options.activation]()
        self.dropout = nn.Dropout(options.dropout) if options.dropout > 0 else nn.Identity()

    def layer(self, k: int) -> tuple[Tensor, Tensor]:
        """Layer k's weights `[G, copies, in, out]` and biases `[G, copies, out]` of every group."""
        if len(self.centre_weight):
            return self.weight[k] * self.centre_weight[k], self.bias[k] + self.centre_bias[k]
        return self.weight[k], self.bias[k]

    def forward(self, x: Tensor, rows: GroupedRows) -> Tensor:
        traced = rows.traced
        h = x if traced else rows.pack(x)  # [B, in] or [G, N, in]
        for k in range(len(self.weight)):
            weight, bias = self.layer(k)
            if traced:  # each row with its own group's weights
                weight, bias = weight[rows.group], bias[rows.group]
                h = torch.einsum("bi,beio->beo" if k == 0 else "bei,beio->beo", h, weight) + bias
            else:
                h = torch.einsum("gni,geio->gneo" if k == 0 else "gnei,geio->gneo", h, weight) + bias.unsqueeze(1)
            if k < self.num_hidden:
                h = self.dropout(self.act(h))
        return h if traced else rows.unpack(h)
