"""Scaling gates: LHUC (Swietojanski et al. 2016) and the PPNet / PEPNet gate neural unit.

    gate(x) = gamma * sigmoid(MLP(x)),   gamma = 2  ->  one scale in [0, 2] per unit

The output layer starts at zero, so every gate starts at exactly 1 and the gated network starts as the
plain one; the gate then learns to amplify (up to 2x) or silence units.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from msrec.nn.embedding import table_offsets
from msrec.nn.grow import field_sizes, grow_table
from msrec.nn.mlp import MLP, Dropout, MLPOptions
from msrec.schema import FeatureSpec


class ScaleGate(nn.Module):
    """`gamma * sigmoid(MLP(x))`: `out_dim` scales in `[0, gamma]`; `options` are the MLP's hidden layers."""

    def __init__(self, in_dim: int, out_dim: int, options: MLPOptions, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma
        self.net = MLP.of(in_dim, options, out_dim)
        last = self.net.layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.gamma * torch.sigmoid(self.net(x))


class GatedMLP(nn.Module):
    """PPNet's main network: hidden layer l is `delta_l(g) * act(W_l h + b_l)` (then dropout), each layer with
    its own `ScaleGate` of the gate input `g`; a linear output layer. `gate_values(g)` is the gate path alone.
    `options` describe the main layers, `gate` each gate's hidden layers."""

    def __init__(self, in_dim: int, options: MLPOptions, out_dim: int, gate_in: int, gate: MLPOptions,
                 gamma: float = 2.0):
        super().__init__()
        self.layers = nn.ModuleList()
        self.gates = nn.ModuleList()
        dim = in_dim
        for width in options.hidden:  # one hidden layer of the shared MLP each, so that its gate scales it before dropout
            self.layers.append(MLP(dim, [width], activation=options.activation, batch_norm=options.batch_norm))
            self.gates.append(ScaleGate(gate_in, width, gate, gamma))
            dim = width
        self.dropout = Dropout(options.dropout)
        self.out = nn.Linear(dim, out_dim)

    def gate_values(self, g: Tensor) -> list[Tensor]:
        """The scales `delta_l [B, width_l]` of every hidden layer."""
        return [gate(g) for gate in self.gates]

    def forward(self, h: Tensor, g: Tensor) -> Tensor:
        for layer, delta in zip(self.layers, self.gate_values(g), strict=True):
            h = self.dropout(layer(h) * delta)
        return self.out(h)


class SubsetEmbedding(nn.Module):
    """An embedding table of its own for a few sparse fields (e.g. a gate's inputs), so that training the
    gate never moves the main model's embeddings. `forward` gives `[B, len(fields) * dim]`."""

    def __init__(self, spec: FeatureSpec, fields: list[int], dim: int, init_std: float = 1e-2):
        super().__init__()
        self.fields = list(fields)
        sizes = [spec.sparse_vocab[f] for f in self.fields]
        self.register_buffer("offsets", table_offsets(sizes), persistent=False)
        self.table = nn.Embedding(max(1, sum(sizes)), dim)
        nn.init.normal_(self.table.weight, std=init_std)
        self.out_dim = len(self.fields) * dim

    def grow_vocab(self, sizes: list[int], source: list[Tensor]) -> None:
        """As `FeatureEmbedding.grow_vocab`, `sizes` / `source` given for every sparse field of the spec."""
        old = field_sizes(self.offsets, self.table.weight.shape[0])
        grown = grow_table(self.table.weight, old, [sizes[f] for f in self.fields], [source[f] for f in self.fields])
        self.table.weight = nn.Parameter(grown, requires_grad=self.table.weight.requires_grad)
        self.table.num_embeddings = grown.shape[0]
        self.offsets = table_offsets([sizes[f] for f in self.fields]).to(self.offsets.device)

    def forward(self, sparse: Tensor) -> Tensor:
        return self.table(sparse[:, self.fields].long() + self.offsets).flatten(1)
