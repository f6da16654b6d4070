"""The multilayer perceptron every model is built from, and `MLPOptions`, the options of any MLP part of a
model (main network, towers, gates, ...), so that every part is configured with the same four keys."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "prelu": nn.PReLU}


class MLPOptions(BaseModel):
    """One MLP part of a model. A model gives each part its own defaults (`part()` in models/registry.py)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    hidden: list[int] = Field(default_factory=lambda: [256, 128])
    """Hidden layer widths ([]: none)."""
    dropout: float = Field(0.2, ge=0, le=1)
    """Dropout after each hidden layer (training only)."""
    activation: Literal["relu", "gelu", "silu", "tanh", "prelu"] = "relu"
    """Activation after each hidden layer."""
    batch_norm: bool = False
    """Batch normalization before each activation."""


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout (each unit kept with probability 1 - p, scaled by 1 / (1 - p)) whose mask, on CPU, comes
    from the four 16-bit lanes of each 64-bit random draw: ~3x faster than nn.Dropout's `bernoulli_` (forward and
    backward, benchmarks/dropout.py), which took 45% of dnn's training step on CPU (BENCHMARKS.md, "Dropout
    mask on CPU"). The keep probability is rounded to a multiple of 1/65536 and kept units are scaled by the
    inverse of that rounded value, so the expectation is x exactly. Other devices (fused kernels there), tracing
    and p outside (0, 1): `F.dropout`."""
    keep = round((1.0 - p) * 65536)
    if not training or p == 0:
        return x
    if x.device.type != "cpu" or not 0 < keep < 65536 or torch.jit.is_tracing():
        return F.dropout(x, p, True)
    n = x.numel()
    lanes = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(1 << 63), None)
    mask = lanes.view(torch.int16)[:n].view(x.shape).lt(keep - 32768)  # lanes are uniform over [-32768, 32767]
    return x * mask.to(x.dtype).mul_(65536 / keep)


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout` (its faster mask on CPU)."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm1d that takes a batch of one row in training (a scenario's slice of a routed batch, a last
    batch of one row): that row is normalised with the running statistics and leaves them unchanged, where
    BatchNorm1d would fail (a variance needs two rows)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] < 2:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class MLP(nn.Module):
    """Linear -> [BatchNorm] -> activation -> dropout, per hidden layer; an optional linear output layer."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int | None = None, dropout: float = 0.0,
                 activation: str = "relu", batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for width in hidden:
            layers.append(nn.Linear(dim, width))
            if batch_norm:
                layers.append(BatchNorm(width))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(Dropout(dropout))
            dim = width
        if out_dim is not None:
            layers.append(nn.Linear(dim, out_dim))
            dim = out_dim
        self.out_dim = dim
        self.layers = nn.Sequential(*layers)

    @classmethod
    def of(cls, in_dim: int, options: MLPOptions, out_dim: int | None = None) -> MLP:
        """The MLP an `MLPOptions` part describes."""
        return cls(in_dim, options.hidden, out_dim, options.dropout, options.activation, options.batch_norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
