"""lhuc: scenario-dependent field weights (Learning Hidden Unit Contributions) before a shared MLP.

    C = 2 * sigmoid(MLP_c(z))            one weight in [0, 2] per feature field, C in R^F
    e' = [C_1 * emb(field_1); ...; C_F * emb(field_F); dense]
    logit = MLP(e')

Each scenario re-weights the fields (a field that matters in one scenario and not in another is
amplified or silenced) while every parameter of the main MLP is shared.

Choices:
- The weight net's output layer starts at zero, so C starts at 1 everywhere: the model starts as `dnn`.
- Fields are the embedded ones (sparse ids and pooled lists); dense values are not re-weighted.
- `z` keeps its gradient: the scenario embedding is trained by both the weight net and the main MLP.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.registry import ModelOptions, register
from msrec.nn import MLP, FeatureEmbedding
from msrec.nn.gates import ScaleGate
from msrec.schema import FeatureSpec


class LHUCOptions(ModelOptions):
    """`hidden`: the main MLP; `gate_hidden`: hidden layers of the weight net over `z`; `gamma`: the
    largest weight (2 in LHUC)."""

    gate_hidden: list[int] = Field(default_factory=lambda: [64])
    gamma: float = Field(2.0, gt=0)


@register("lhuc", LHUCOptions, "Per-scenario field weights in [0, 2] (2*sigmoid of an MLP over the scenario features)")
class LHUC(nn.Module):
    def __init__(self, spec: FeatureSpec, options: LHUCOptions):
        super().__init__()
        o = options
        self.scenario_fields = list(spec.scenario_fields)
        self.embedding = FeatureEmbedding(spec, o.embed_dim)
        self.gate = ScaleGate(len(self.scenario_fields) * o.embed_dim, self.embedding.num_fields, o.gate_hidden,
                              o.gamma, o.activation)
        self.mlp = MLP(self.embedding.flat_dim, o.hidden, spec.num_tasks, o.dropout, o.activation, o.batch_norm)

    def field_weights(self, batch: Batch) -> Tensor:
        """`C [B, F]`, one weight per embedded field."""
        return self.gate(self.embedding.select(batch, self.scenario_fields))

    def forward(self, batch: Batch) -> Tensor:
        fields = self.embedding.fields(batch) * self.field_weights(batch).unsqueeze(-1)
        return self.mlp(self.embedding.flat(batch, fields))
