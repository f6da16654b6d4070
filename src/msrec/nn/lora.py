"""Per-scenario low-rank adapters on shared layers (MLoRA): scenario s's layer is `W + B_s A_s`.

    y = x W^T + b  +  (x A_s^T) B_s^T + b_s        A_s [r, in], B_s [out, r], b_s [out]

A scenario owns r x (in + out) + out numbers per layer instead of STAR's out x in, and a row costs its shared
layer plus two thin matmuls through its own scenario's adapter (`ScenarioRouting.linear`, one grouped matmul
each over the scenarios present): the cost of a step follows the rows, and the adapters' few weights are all
that grows with S. `B_s` starts at zero (LoRA's initialisation), so training starts from the shared network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msrec.nn.grow import grow_rows
from msrec.nn.routing import ScenarioRouting, stacked


def lora_rank(width: int, rank: int | None, reduce: int) -> int:
    """The adapter rank of a layer of `width` outputs: `rank`, or width / reduce (at least 1) as the paper's code."""
    return rank if rank is not None else max(1, width // reduce)


class ScenarioLoRALinear(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, rank: int, num_scenarios: int):
        super().__init__()
        self.shared = nn.Linear(in_dim, out_dim)
        bound = 1 / math.sqrt(in_dim)  # A_s drawn as nn.Linear draws a weight (LoRA's A), B_s zeros
        self.down = stacked(nn.Parameter(torch.empty(num_scenarios, rank, in_dim).uniform_(-bound, bound)))
        self.up = stacked(nn.Parameter(torch.zeros(num_scenarios, out_dim, rank)))
        self.bias_s = stacked(nn.Parameter(torch.zeros(num_scenarios, out_dim)))

    def grow_scenarios(self, source: Tensor) -> None:
        """New scenarios start with their source scenarios' adapters (msrec.nn.grow)."""
        grow_rows(self, source, "down", "up", "bias_s")

    def scenario_weight(self, s: int) -> tuple[Tensor, Tensor]:
        """Scenario s's whole layer, `W + B_s A_s` and `b + b_s` (tests, inspection)."""
        return self.shared.weight + self.up[s] @ self.down[s], self.shared.bias + self.bias_s[s]

    def forward(self, tiles: Tensor, routing: ScenarioRouting) -> Tensor:
        """The layer on tiles `[N, C, in]`, each tile through its scenario's adapter."""
        low = routing.linear(tiles, self.down)
        return F.linear(tiles, self.shared.weight, self.shared.bias) + routing.linear(low, self.up, self.bias_s)
