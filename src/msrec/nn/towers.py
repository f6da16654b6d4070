"""One MLP tower per scenario over a shared representation (Split&Merge, HMoE)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from msrec.nn.mlp import MLP, MLPOptions
from msrec.nn.routing import ScenarioRouting, exporting


class ScenarioTowers(nn.Module):
    """One `MLP.of(options)` per scenario, so a model's `tower` part (`hidden`, `dropout`, `activation`,
    `batch_norm`) reaches every tower: `tower: {batch_norm: true}` puts BatchNorm in split_merge's, mmoe's
    and ple's towers (tests/models/test_batch_norm.py). hmoe refuses it: `cross_scores` runs each tower on
    the other scenarios' rows too, which in training would move the tower's running statistics."""

    def __init__(self, in_dim: int, options: MLPOptions, out_dim: int, num_scenarios: int):
        super().__init__()
        self.num_scenarios = num_scenarios
        self.towers = nn.ModuleList(MLP.of(in_dim, options, out_dim) for _ in range(num_scenarios))

    def __getitem__(self, s: int) -> nn.Module:
        return self.towers[s]

    def forward(self, h: Tensor, routing: ScenarioRouting) -> Tensor:
        """Each row scored by its own scenario's tower only (split, run, merge in row order)."""
        return routing.apply(lambda s, rows: self.towers[s](rows), h)

    def cross_scores(self, grouped: tuple[Tensor, ...]) -> Tensor:
        """Every tower on every row: `[N, S, out]` in grouped (scenario-sorted) row order.

        Tower s runs on its own rows with gradient and on all other rows under `torch.no_grad` (the
        stop-gradient of HMoE), so its parameters learn from its own scenario only and each row costs
        each tower one forward pass.
        """
        h = torch.cat(grouped, 0)
        if exporting():  # an inference graph: no gradient to stop, and no data-dependent slicing to bake in
            return torch.stack([tower(h) for tower in self.towers], 1)
        counts = [len(g) for g in grouped]
        columns = []
        start = 0
        for s, n in enumerate(counts):
            end = start + n
            with torch.no_grad():
                foreign = self.towers[s](torch.cat([h[:start], h[end:]], 0))
            own = self.towers[s](h[start:end]) if n else foreign.new_zeros(0, *foreign.shape[1:])
            columns.append(torch.cat([foreign[:start], own, foreign[start:]], 0))
            start = end
        return torch.stack(columns, 1)
