"""epnet: Embedding Personalized Network, the embedding half of PEPNet (Chang et al., KDD 2023).

    delta  = 2 * sigmoid(W' relu(V [emb'(z); stop_gradient(e)] + c) + b')    one scale per field   [B, F]
    o_f    = delta_f * emb_f                                                  each field's embedding scaled
    logit  = MLP([o_1; ...; o_F; dense])                                      one shared MLP        [B, T]

The shared embeddings say the same thing about a feature in every scenario; EPNet's gate (the Gate
Neural Unit, `nn.gates.ScaleGate`) lets the scenario re-weight each field before the shared MLP reads it:
amplify (up to 2x) or silence a field per scenario. The gate reads the scenario only through its input
(its own embeddings `emb'` of the scenario-indicator fields), and the general embeddings `e` through a
stop-gradient, so the gate path can never pull the shared embeddings; the main path trains them all
(the scenario's included).

Choices (from the paper, where it is open or specific to Kuaishou):
- One scale per field (the spec's "scales each field's embedding"), broadcast over the field's units;
  dense values are not embeddings and pass unscaled (the gate still reads them). `pepnet` scales every
  unit instead and adds PPNet's hidden-layer gates.
- The gate has its own embeddings of the scenario-indicator fields (`gate_embed_dim`), as in `pepnet`.
- The gate's output layer starts at zero: every scale starts at exactly 1 and the model starts as `dnn`.
- Multi-task: one shared MLP with T outputs.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.registry import ModelOptions, part, register
from msrec.nn import MLP, FeatureEmbedding, MLPOptions
from msrec.nn.gates import ScaleGate, SubsetEmbedding
from msrec.schema import FeatureSpec


class EPNetOptions(ModelOptions):
    mlp: MLPOptions = part([256, 128], dropout=0.2)
    """The shared MLP over the scaled embeddings."""
    gate: MLPOptions = part([64])
    """The EPNet gate (Gate Neural Unit)."""
    gate_embed_dim: int | None = Field(None, ge=1)
    """Size of the gate's own scenario-indicator embeddings (None: `embed_dim`)."""
    gamma: float = Field(2.0, gt=0)
    """The largest scale."""


@register("epnet", EPNetOptions, "Scenario gate scales each field's embedding (stop-gradient), then one shared MLP")
class EPNet(nn.Module):
    def __init__(self, spec: FeatureSpec, options: EPNetOptions):
        super().__init__()
        o = options
        self.embedding = FeatureEmbedding(spec, o.embed_dim, o.backbone)
        self.scenario_embedding = SubsetEmbedding(spec, list(spec.scenario_fields), o.gate_embed_dim or o.embed_dim)
        gate_in = self.scenario_embedding.out_dim + self.embedding.flat_dim
        self.gate = ScaleGate(gate_in, self.embedding.num_fields, o.gate, o.gamma)
        self.mlp = MLP.of(self.embedding.flat_dim, o.mlp, spec.num_tasks)

    def scales(self, batch: Batch, fields: Tensor | None = None) -> Tensor:
        """`delta [B, F]`: the scale of each field's embedding (the gate path alone)."""
        fields = self.embedding.fields(batch) if fields is None else fields
        e = self.embedding.flat(batch, fields)
        return self.gate(torch.cat([self.scenario_embedding(batch.sparse), e.detach()], 1))

    def forward(self, batch: Batch) -> Tensor:
        fields = self.embedding.fields(batch)
        scaled = self.scales(batch, fields).unsqueeze(-1) * fields
        return self.mlp(self.embedding.flat(batch, scaled))
