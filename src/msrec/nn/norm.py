"""Partitioned normalization (STAR): batch normalization whose statistics are kept per scenario.

    y = (gamma * gamma_s) * (x - mean_s) / sqrt(var_s + eps) + (beta + beta_s)

In training, `mean_s` / `var_s` are the statistics of scenario `s`'s rows in the batch (so one scenario's
norm never sees another's rows), and each scenario's running mean / var is updated from its own rows
only. In evaluation the running statistics are used, so a row's output does not depend on which other
rows share its batch. Whole-batch scatter ops (`index_add_`), no per-scenario Python loop.

Small slices. A scenario with fewer than `min_rows` rows in a training batch (default `MIN_ROWS` = 16) is
normalised with its running statistics, as in evaluation (and as `nn.mlp.BatchNorm` treats a batch of
one row): batch statistics of one row give mean = x and var = 0 (a constant output, no gradient to the
row's features), and those of two or three rows are noise. Why 16: the batch mean of n rows is off by
sigma / sqrt(n) and the batch variance by about sqrt(2 / n) of itself, 0.25 sigma and 35% at 16 rows,
twice that at 4; BatchNorm's ImageNet error grows from 23.6% at 32 rows per batch to 34.7% at 2 (Wu & He,
Group Normalization, 2018), and a scenario below 16 rows of a 2,048-row batch is under 0.8% of the data.
The running statistics are still updated from a small slice (its mean from any row, its variance from
two rows or more): averaged over many batches the noise cancels, so a scenario that is always small still
gets its own statistics. A slice of `min_rows` or more is normalised with its batch statistics, as before.

Running statistics start as the mean of the batches seen. Each scenario's running mean (and variance)
moves by max(1 / (its updates so far + 1), momentum): its first batch sets it, the next ones average in,
and from 1 / momentum updates on it is the usual moving average. The initial (0, 1) would otherwise linger:
embeddings start with a standard deviation of 0.01, and after an epoch of 40 batches at momentum 0.1 the
running variance was still 0.9^40 = 0.015 of its initial 1, about 40 times the true one on the
MovieLens 1M sample, so a model kept after its first epoch (early stopping) scored each scenario on its
own wrong scale (overall test AUC 0.72 against 0.76 per scenario). The update counts are not saved with
the model (evaluation does not use them; run directories written before them load as they are).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from msrec.nn.grow import grow_rows
from msrec.nn.routing import stacked

MIN_ROWS = 16  # a scenario with fewer rows in a training batch is normalised with its running statistics


class PartitionedNorm(nn.Module):
    def __init__(self, dim: int, num_scenarios: int, eps: float = 1e-5, momentum: float = 0.1,
                 min_rows: int = MIN_ROWS):
        super().__init__()
        self.dim, self.num_scenarios, self.eps, self.momentum = dim, num_scenarios, eps, momentum
        self.min_rows = max(2, min_rows)
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.gamma_s = stacked(nn.Parameter(torch.ones(num_scenarios, dim)))
        self.beta_s = stacked(nn.Parameter(torch.zeros(num_scenarios, dim)))
        self.register_buffer("running_mean", torch.zeros(num_scenarios, dim))
        self.register_buffer("running_var", torch.ones(num_scenarios, dim))
        # Updates so far of each scenario's running mean (row 0) and variance (row 1).
        self.register_buffer("updates", torch.zeros(2, num_scenarios), persistent=False)

    def grow_scenarios(self, source: Tensor) -> None:
        """New scenarios start with their source scenarios' scales and running statistics (msrec.nn.grow)."""
        grow_rows(self, source, "gamma_s", "beta_s", "running_mean", "running_var")
        self.updates = self.updates.new_zeros(2, self.gamma_s.shape[0])
        self.num_scenarios = self.gamma_s.shape[0]

    def batch_stats(self, x: Tensor, scenario: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-scenario mean and biased variance `[S, D]` of the batch, and the row count per scenario."""
        counts = torch.bincount(scenario, minlength=self.num_scenarios).to(x.dtype)
        denom = counts.clamp(min=1).unsqueeze(1)
        mean = x.new_zeros(self.num_scenarios, self.dim).index_add_(0, scenario, x) / denom
        centred = x - mean.index_select(0, scenario)
        var = x.new_zeros(self.num_scenarios, self.dim).index_add_(0, scenario, centred * centred) / denom
        return mean, var, counts

    def forward(self, x: Tensor, scenario: Tensor) -> Tensor:
        if self.training:
            batch_mean, batch_var, counts = self.batch_stats(x, scenario)
            small = (counts < self.min_rows).unsqueeze(1)  # these slices use the running statistics
            mean = torch.where(small, self.running_mean, batch_mean)  # (before this batch's update)
            var = torch.where(small, self.running_var, batch_var)
            self.update_running(batch_mean.detach(), batch_var.detach(), counts)
        else:
            mean, var = self.running_mean, self.running_var
        # Each scenario's affine map, formed once per scenario and gathered per row: y = x * scale_s + shift_s.
        scale = self.gamma * self.gamma_s * torch.rsqrt(var + self.eps)
        shift = self.beta + self.beta_s - mean * scale
        return torch.addcmul(shift.index_select(0, scenario), x, scale.index_select(0, scenario))

    @torch.no_grad()
    def update_running(self, mean: Tensor, var: Tensor, counts: Tensor) -> None:
        """Moves each present scenario's running mean (and, from two rows, its unbiased variance) by
        max(1 / (updates + 1), momentum): the mean of the batches so far, then a moving average."""
        moved = torch.stack([counts > 0, counts > 1])  # one row has no variance to learn from
        rate = (1 / (self.updates + 1)).clamp(min=self.momentum) * moved  # [2, S], 0 where not moved
        unbiased = var * (counts / (counts - 1).clamp(min=1)).unsqueeze(1)
        dtype = self.running_mean.dtype
        self.running_mean.lerp_(mean.to(dtype), rate[0].unsqueeze(1).to(dtype))
        self.running_var.lerp_(unbiased.to(dtype), rate[1].unsqueeze(1).to(dtype))
        self.updates += moved
