"""Mixture-of-experts parts (MMoE, PLE): a bank of expert MLPs and softmax gates over experts (the
per-scenario gates are stacked, nn.towers.ScenarioLinear).

    X      = [expert_1(x); ...; expert_E(x)]          [B, E, d]
    w(x)   = softmax(W x + b)                         [B, E], one weight per expert, summing to 1
    mix    = sum_i w_i X_i                            [B, d]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from msrec.nn.mlp import MLP, MLPOptions


class Experts(nn.Module):
    """`num` independent MLPs over the same input; `forward` gives `[B, num, out_dim]`."""

    def __init__(self, in_dim: int, options: MLPOptions, num: int):
        super().__init__()
        self.experts = nn.ModuleList(MLP.of(in_dim, options) for _ in range(num))
        self.num = num
        self.out_dim = self.experts[0].out_dim if num else in_dim

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([expert(x) for expert in self.experts], 1)


class ExpertGate(nn.Module):
    """A linear layer and a softmax: `[B, num_experts]` weights that sum to 1 per row."""

    def __init__(self, in_dim: int, num_experts: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, num_experts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.linear(x), -1)


def mix(weights: Tensor, experts: Tensor) -> Tensor:
    """`[B, E] x [B, E, d] -> [B, d]`: each row's weighted sum of its own expert outputs."""
    return (weights.unsqueeze(-1) * experts).sum(1)
