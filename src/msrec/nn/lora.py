"""Per-scenario low-rank adapters on shared layers (MLoRA): scenario s's layer is `W + B_s A_s`.

    y = x W^T + b  +  (x A_s^T) B_s^T + b_s        A_s [r, in], B_s [out, r], b_s [out]

A scenario owns r x (in + out) + out numbers per layer instead of STAR's out x in, and a row costs its shared
layer plus two thin matmuls through its own scenario's adapter (`ScenarioRouting.linear_of`, one grouped
matmul each over the scenarios present): the cost of a step follows the rows, and the adapters' few weights
are all that grows with S. `B_s` starts at zero (LoRA's initialisation), so training starts from the shared
network.

A hierarchical scenario (`levels`) composes each combination's factors by level, as the towers compose their
weights (nn.towers): `A_s = A + A_own[s] + A_country[c] + A_placement[p]`, likewise `B_s` (no shared `B`: a
shared low-rank change of `W` is `W`'s own business) and `b_s`. A combination's adapter keeps rank r, and
its factors learn from every combination that holds one of its level values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msrec.nn.grow import grow_rows
from msrec.nn.levels import LevelParts
from msrec.nn.routing import ScenarioRouting, stacked
from msrec.schema import ScenarioLevels


def lora_rank(width: int, rank: int | None, reduce: int) -> int:
    """The adapter rank of a layer of `width` outputs: `rank`, or width / reduce (at least 1) as the paper's code."""
    return rank if rank is not None else max(1, width // reduce)


class ScenarioLoRALinear(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, rank: int, num_scenarios: int, levels: ScenarioLevels | None = None,
                 own: bool = True):
        super().__init__()
        self.shared = nn.Linear(in_dim, out_dim)
        bound = 1 / math.sqrt(in_dim)  # A drawn as nn.Linear draws a weight (LoRA's A), B zeros
        self.down = self.up = self.bias_s = None
        if levels is None:
            self.down = stacked(nn.Parameter(torch.empty(num_scenarios, rank, in_dim).uniform_(-bound, bound)))
        elif own:  # a combination's own deltas around its levels' factors
            self.down = stacked(nn.Parameter(torch.zeros(num_scenarios, rank, in_dim)))
        if levels is None or own:
            self.up = stacked(nn.Parameter(torch.zeros(num_scenarios, out_dim, rank)))
            self.bias_s = stacked(nn.Parameter(torch.zeros(num_scenarios, out_dim)))
        self.levels = None if levels is None else nn.ModuleDict({
            "down": LevelParts(levels, (rank, in_dim), "add", base=torch.empty(rank, in_dim).uniform_(-bound, bound)),
            "up": LevelParts(levels, (out_dim, rank), "add"),
            "bias": LevelParts(levels, (out_dim,), "add")})

    def grow_scenarios(self, source: Tensor) -> None:
        """New scenarios start with their source scenarios' own adapters (msrec.nn.grow); level parts grow by new
        level values instead (`LevelParts.grow_levels`, called by msrec extend)."""
        if self.up is not None:
            grow_rows(self, source, *(["down"] if self.down is not None else []), "up", "bias_s")

    def adapters(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every scenario's `A_s [S, r, in]`, `B_s [S, out, r]`, `b_s [S, out]` (tests, inspection)."""
        if self.levels is None:
            return self.down, self.up, self.bias_s
        return (self.levels["down"].every(self.down), self.levels["up"].every(self.up),
                self.levels["bias"].every(self.bias_s))

    def scenario_weight(self, s: int) -> tuple[Tensor, Tensor]:
        """Scenario s's whole layer, `W + B_s A_s` and `b + b_s` (tests, inspection)."""
        down, up, bias = self.adapters()
        return self.shared.weight + up[s] @ down[s], self.shared.bias + bias[s]

    def forward(self, tiles: Tensor, routing: ScenarioRouting) -> Tensor:
        """The layer on tiles `[N, C, in]`, each tile through its scenario's adapter."""
        shared = F.linear(tiles, self.shared.weight, self.shared.bias)
        if self.levels is None:
            return shared + routing.linear(routing.linear(tiles, self.down), self.up, self.bias_s)
        low = routing.linear_of(tiles, lambda r: self.levels["down"].compose(r, self.down))
        return shared + routing.linear_of(low, lambda r: self.levels["up"].compose(r, self.up),
                                          lambda r: self.levels["bias"].compose(r, self.bias_s))
