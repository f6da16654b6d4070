"""A bank of independent MLPs that all run on every row, their weights stacked into one tensor per layer
(M3oE's shared, scenario and task experts): one batched matmul per layer for the whole bank, no Python loop
over its members, however many (`nn.moe.Experts` loops over its experts; `nn.towers.ScenarioMLP` runs each
scenario's MLP on that scenario's rows only).

    layer k:  h[b, n] <- act(h[b, n] @ W_k[n] + b_k[n])      W_k [N, in, out], every row b, every member n
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import Tensor, nn

from msrec.nn.mlp import ACTIVATIONS, BatchNorm, Dropout, MLPOptions


class StackedMLP(nn.Module):
    """`num` MLPs over the same input: `forward(x [B, in])` gives `[B, num, out_dim]`. The hidden layers of
    `options` (each: linear, batch norm of every member's units if asked, activation, dropout), then a
    linear output layer of width `out_dim` if given. Initialised as `nn.Linear`."""

    def __init__(self, in_dim: int, options: MLPOptions, num: int, out_dim: int | None = None):
        super().__init__()
        dims = [in_dim, *options.hidden, *([out_dim] if out_dim is not None else [])]
        self.num, self.num_hidden, self.out_dim = num, len(options.hidden), dims[-1]
        self.weight = nn.ParameterList()
        self.bias = nn.ParameterList()
        for a, b in pairwise(dims):
            bound = 1 / math.sqrt(a)
            self.weight.append(nn.Parameter(torch.empty(num, a, b).uniform_(-bound, bound)))
            self.bias.append(nn.Parameter(torch.empty(num, b).uniform_(-bound, bound)))
        self.norms = nn.ModuleList(BatchNorm(num * width) if options.batch_norm else nn.Identity()
                                   for width in options.hidden)
        self.act = ACTIVATIONS[options.activation]()
        self.dropout = Dropout(options.dropout) if options.dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = torch.einsum("bi,nio->bno", x, self.weight[0]) + self.bias[0]
        for k in range(1, len(self.weight) + 1):
            if k <= self.num_hidden:
                h = self.dropout(self.act(self.norms[k - 1](h.flatten(1)).view_as(h)))
            if k < len(self.weight):
                h = torch.einsum("bni,nio->bno", h, self.weight[k]) + self.bias[k]
        return h
