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
from msrec.models.registry import ModelOptions, part, register
from msrec.nn import MLP, FeatureEmbedding, MLPOptions
from msrec.nn.gates import ScaleGate
from msrec.schema import FeatureSpec


class LHUCOptions(ModelOptions):
    legacy = ModelOptions.legacy | {"gate_hidden": ("gate.hidden",), "activation": ("mlp.activation", "gate.activation")}
    search_space = ModelOptions.search_space | {"model.gamma": {"low": 1.0, "high": 3.0},
                                               "model.gate.hidden": {"choices": [[32], [64], [128]]}}  # tuning's (docs/tuning.md)
    mlp: MLPOptions = part([256, 128], dropout=0.2)
    """The main MLP, over the re-weighted fields."""
    gate: MLPOptions = part([64])
    """The field-weight net over `z`."""
    gamma: float = Field(2.0, gt=0)
    """The largest field weight (2 in LHUC)."""


@register("lhuc", LHUCOptions, "Per-scenario field weights in [0, 2] (2*sigmoid of an MLP over the scenario features)")
class LHUC(nn.Module):
    def __init__(self, spec: FeatureSpec, options: LHUCOptions):
        super().__init__()
        o = options
        self.scenario_fields = list(spec.scenario_fields)
        self.embedding = FeatureEmbedding(spec, o.embed_dim, o.backbone)
        self.gate = ScaleGate(len(self.scenario_fields) * o.embed_dim, self.embedding.num_fields, o.gate, o.gamma)
        self.mlp = MLP.of(self.embedding.flat_dim, o.mlp, spec.num_tasks)

    def field_weights(self, batch: Batch) -> Tensor:
        """`C [B, F]`, one weight per embedded field."""
        return self.gate(self.embedding.select(batch, self.scenario_fields))

    def forward(self, batch: Batch) -> Tensor:
        fields = self.embedding.fields(batch) * self.field_weights(batch).unsqueeze(-1)
        return self.mlp(self.embedding.flat(batch, fields))
