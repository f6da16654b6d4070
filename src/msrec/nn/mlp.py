"""The multilayer perceptron every model is built from, and `MLPOptions`, the options of any MLP part of a
model (main network, towers, gates, ...), so that every part is configured with the same four keys."""

from __future__ import annotations

from typing import Literal

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
                layers.append(nn.Dropout(dropout))
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
