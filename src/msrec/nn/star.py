"""Star-topology fully connected network (STAR): every layer is a shared centre plus a scenario's own part.

    layer i of scenario s:  x <- act( x (W_s,i * W_i)^T + (b_s,i + b_i) )      (* = element-wise)

`W_s` starts at ones and `b_s` at zeros, so training starts from the shared network and each scenario
learns a multiplicative correction of it. `W_s` is stacked `[S, out, in]`; rows are laid out in tiles of
one scenario each (nn.routing) and each tile's weights `W_s * W` are formed from its scenario's slice, so
a batch forms one weight matrix per tile (not per scenario of the model) and a scenario's weights see,
and get gradient from, its own rows only.

A hierarchical scenario (`levels`, nn.levels): combination s = (c, p) has
`W_s = W_own[s] * W_country[c] * W_placement[p]` (all starting at ones; `own=False` drops `W_own`) and
`b_s = b_own[s] + b_country[c] + b_placement[p]` (zeros), so a combination with few rows gets the
corrections of its country and its placement, learnt from every combination holding them.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msrec.nn.grow import grow_rows
from msrec.nn.levels import LevelParts
from msrec.nn.mlp import ACTIVATIONS, Dropout, MLPOptions
from msrec.nn.routing import ScenarioRouting, stacked
from msrec.schema import ScenarioLevels


class StarLinear(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_scenarios: int, levels: ScenarioLevels | None = None,
                 own: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        self.bias = nn.Parameter(torch.empty(out_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's initialization
        bound = 1 / math.sqrt(in_dim)
        nn.init.uniform_(self.bias, -bound, bound)
        if levels is None or own:  # a combination's own W_s, b_s (all a flat scenario has)
            self.weight_s = stacked(nn.Parameter(torch.ones(num_scenarios, out_dim, in_dim)))
            self.bias_s = stacked(nn.Parameter(torch.zeros(num_scenarios, out_dim)))
        else:
            self.weight_s = self.bias_s = None
        self.weight_levels = None if levels is None else LevelParts(levels, (out_dim, in_dim), "mul")
        self.bias_levels = None if levels is None else LevelParts(levels, (out_dim,), "add")

    def grow_scenarios(self, source: Tensor) -> None:
        """New scenarios' `W_s`, `b_s` copied from their source scenarios' (msrec.nn.grow); level parts grow by
        new level values instead (`LevelParts.grow_levels`, called by msrec extend)."""
        if self.weight_s is not None:
            grow_rows(self, source, "weight_s", "bias_s")

    def scenario_weights(self) -> tuple[Tensor, Tensor]:
        """Every scenario's `W_s * W` and `b_s + b`: `[S, out, in]`, `[S, out]`."""
        if self.weight_levels is None:
            return self.weight_s * self.weight, self.bias_s + self.bias
        return (self.weight_levels.every(self.weight_s) * self.weight,
                self.bias_levels.every(self.bias_s) + self.bias)

    def forward(self, x: Tensor, s: int) -> Tensor:
        """The layer of scenario `s` on rows that all belong to `s`."""
        if self.weight_levels is None:  # one slice, not every scenario's
            return F.linear(x, self.weight_s[s] * self.weight, self.bias_s[s] + self.bias)
        weight, bias = self.scenario_weights()
        return F.linear(x, weight[s], bias[s])

    def tiles(self, h: Tensor, routing: ScenarioRouting) -> Tensor:
        """The layer on tiles `[N, C, in]`, each with its scenario's weights, composed once per scenario present
        (`routing.linear_of`)."""
        if self.weight_levels is None:
            return routing.linear_of(h, lambda r: r.gather(self.weight_s) * self.weight,
                                     lambda r: r.gather(self.bias_s) + self.bias)
        return routing.linear_of(h, lambda r: self.weight_levels.compose(r, self.weight_s) * self.weight,
                                 lambda r: self.bias_levels.compose(r, self.bias_s) + self.bias)


class StarFCN(nn.Module):
    """Hidden star layers (activation, dropout after each) and a star output layer of width `out_dim`.
    No batch normalization: STAR normalizes its input per scenario instead (nn.norm.PartitionedNorm)."""

    def __init__(self, in_dim: int, options: MLPOptions, out_dim: int, num_scenarios: int,
                 levels: ScenarioLevels | None = None, own: bool = True):
        super().__init__()
        if options.batch_norm:
            raise ValueError("the star FCN has no batch normalization (partitioned normalization replaces it)")
        dims = [in_dim, *options.hidden, out_dim]
        self.layers = nn.ModuleList(StarLinear(a, b, num_scenarios, levels, own) for a, b in pairwise(dims))
        self.act = ACTIVATIONS[options.activation]()
        self.dropout = Dropout(options.dropout) if options.dropout > 0 else nn.Identity()
        self.dropout_p = options.dropout

    def scenario_forward(self, s: int, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, s)
            if i < len(self.layers) - 1:
                x = self.dropout(self.act(x))
        return x

    def forward(self, x: Tensor, routing: ScenarioRouting) -> Tensor:
        h = routing.pack(x)
        for i, layer in enumerate(self.layers):
            h = layer.tiles(h, routing)
            if i < len(self.layers) - 1:
                h = routing.dropout(self.act(h), self.dropout_p, self.training)
        return routing.unpack(h)
