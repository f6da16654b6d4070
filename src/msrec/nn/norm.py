"""Partitioned normalization (STAR): batch normalization whose statistics are kept per scenario.

    y = (gamma * gamma_s) * (x - mean_s) / sqrt(var_s + eps) + (beta + beta_s)

In training, `mean_s` / `var_s` are the statistics of scenario `s`'s rows in the batch (so one scenario's
norm never sees another's rows), and each scenario's running mean / var is updated from its own rows
only. In evaluation the running statistics are used, so a row's output does not depend on which other
rows share its batch. Whole-batch scatter ops (`index_add_`), no per-scenario Python loop.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PartitionedNorm(nn.Module):
    def __init__(self, dim: int, num_scenarios: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.dim, self.num_scenarios, self.eps, self.momentum = dim, num_scenarios, eps, momentum
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.gamma_s = nn.Parameter(torch.ones(num_scenarios, dim))
        self.beta_s = nn.Parameter(torch.zeros(num_scenarios, dim))
        self.register_buffer("running_mean", torch.zeros(num_scenarios, dim))
        self.register_buffer("running_var", torch.ones(num_scenarios, dim))

    def batch_stats(self, x: Tensor, scenario: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-scenario mean and biased variance `[S, D]` of the batch, and the row count per scenario."""
        counts = torch.bincount(scenario, minlength=self.num_scenarios).to(x.dtype)
        denom = counts.clamp(min=1).unsqueeze(1)
        mean = x.new_zeros(self.num_scenarios, self.dim).index_add_(0, scenario, x) / denom
        centred = x - mean[scenario]
        var = x.new_zeros(self.num_scenarios, self.dim).index_add_(0, scenario, centred * centred) / denom
        return mean, var, counts

    def forward(self, x: Tensor, scenario: Tensor) -> Tensor:
        if self.training:
            mean, var, counts = self.batch_stats(x, scenario)
            with torch.no_grad():
                present = (counts > 0).unsqueeze(1)
                unbiased = var * (counts / (counts - 1).clamp(min=1)).unsqueeze(1)
                m = self.momentum
                self.running_mean.copy_(torch.where(present, (1 - m) * self.running_mean + m * mean,
                                                    self.running_mean))
                # One row has no variance to learn from: only scenarios with >= 2 rows update it.
                spread = (counts > 1).unsqueeze(1)
                self.running_var.copy_(torch.where(spread, (1 - m) * self.running_var + m * unbiased,
                                                   self.running_var))
        else:
            mean, var = self.running_mean, self.running_var
        scale = (self.gamma * self.gamma_s)[scenario] * torch.rsqrt(var[scenario] + self.eps)
        return (x - mean[scenario]) * scale + (self.beta + self.beta_s)[scenario]
