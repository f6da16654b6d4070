"""pepnet: Parameter and Embedding Personalized Network (Chang et al., KDD 2023) = EPNet + PPNet.

    delta_ep = 2 * sigmoid(W' relu(V [emb'(z); stop_gradient(e)] + c) + b')     EPNet gate, one per unit of e
    o_ep     = delta_ep * e                                                     personalised input embedding
    g        = [emb'(personal ids); stop_gradient(o_ep)]                        PPNet gate input
    h_0      = o_ep
    h_l      = delta_l(g) * act(W_l h_{l-1} + b_l),  delta_l = 2 * sigmoid(W'_l relu(V_l g + c_l) + b'_l)
    logit    = W_out h_L + b_out                                                [B, T]

EPNet lets the scenario re-weight what the shared embeddings say (the domain-side priors `z` select
embedding units per scenario); PPNet lets the personalisation ids scale each hidden layer. Both gates are
the Gate Neural Unit (`nn.gates.ScaleGate`: a ReLU layer, then `gamma * sigmoid`, gamma = 2).

Choices (from the paper, where it is open or specific to Kuaishou):
- Each gate reads the embeddings it scales through a stop-gradient, as in the paper: neither gate can pull
  the shared embeddings, and the PPNet gates cannot pull EPNet (they read `stop_gradient(o_ep)`).
- The gates have their own embeddings (`emb'`) of the scenario-indicator fields (EPNet) and of the
  personalisation ids (PPNet), so the gate paths never move the main embedding table; the main path still
  trains every main embedding, the scenario's included.
- EPNet scales `e` element-wise (every embedding unit and every dense value has its own scale).
- PPNet follows `ppnet`: one gate per hidden layer scaling that layer's activations, and the same default
  personalisation fields (user / item id fields, else the two largest non-scenario fields). The PPNet gate
  input holds no `z` of its own (the paper's PPNet reads user / item / author priors); the scenario reaches
  it through `o_ep`.
- Multi-task: one gated MLP with T outputs (the paper's per-task towers with task-split gates are not
  built); every gate's output layer starts at zero, so every gate starts at exactly 1 and the model starts
  as `dnn`.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.ppnet import personal_field_indices
from msrec.models.registry import ModelOptions, part, register
from msrec.nn import FeatureEmbedding, MLPOptions
from msrec.nn.gates import GatedMLP, ScaleGate, SubsetEmbedding
from msrec.schema import FeatureSpec


class PEPNetOptions(ModelOptions):
    legacy = ModelOptions.legacy | {"epnet_hidden": ("epnet.hidden",), "gate_hidden": ("gate.hidden",)}
    search_space = ModelOptions.search_space | {"model.gamma": {"low": 1.0, "high": 3.0}, "model.gate.hidden": {"choices": [[32], [64], [128]]},
                                               "model.epnet.hidden": {"choices": [[32], [64], [128]]}}  # tuning's (docs/tuning.md)
    mlp: MLPOptions = part([256, 128], dropout=0.2)
    """The main MLP, one PPNet gate per hidden layer."""
    epnet: MLPOptions = part([64])
    """The EPNet gate on `e`."""
    gate: MLPOptions = part([64])
    """Each PPNet gate."""
    personal_fields: list[str] | None = None
    """Sparse fields embedded for the PPNet gates (None: the user/item id fields, else the two largest)."""
    gate_embed_dim: int | None = Field(None, ge=1)
    """Size of the gates' own embeddings (None: `embed_dim`)."""
    gamma: float = Field(2.0, gt=0)
    """The largest scale."""


@register("pepnet", PEPNetOptions, "EPNet scenario gate on the input embeddings + PPNet hidden-layer gates (PEPNet)")
class PEPNet(nn.Module):
    def __init__(self, spec: FeatureSpec, options: PEPNetOptions):
        super().__init__()
        o = options
        gate_dim = o.gate_embed_dim or o.embed_dim
        self.embedding = FeatureEmbedding(spec, o.embed_dim, o.backbone)
        e_dim = self.embedding.flat_dim
        self.scenario_embedding = SubsetEmbedding(spec, list(spec.scenario_fields), gate_dim)
        self.epnet = ScaleGate(self.scenario_embedding.out_dim + e_dim, e_dim, o.epnet, o.gamma)
        self.personal_embedding = SubsetEmbedding(spec, personal_field_indices(spec, o.personal_fields), gate_dim)
        ppnet_in = self.personal_embedding.out_dim + e_dim
        self.main = GatedMLP(e_dim, o.mlp, spec.num_tasks, ppnet_in, o.gate, o.gamma)

    def epnet_gate(self, batch: Batch, e: Tensor | None = None) -> Tensor:
        """`delta_ep [B, dim(e)]`: the EPNet scales of the input embedding (the EPNet gate path alone)."""
        e = self.embedding.flat(batch) if e is None else e
        return self.epnet(torch.cat([self.scenario_embedding(batch.sparse), e.detach()], 1))

    def ppnet_input(self, batch: Batch, o_ep: Tensor) -> Tensor:
        """`g = [emb'(personal ids); stop_gradient(o_ep)]`."""
        return torch.cat([self.personal_embedding(batch.sparse), o_ep.detach()], 1)

    def ppnet_gates(self, batch: Batch, o_ep: Tensor) -> list[Tensor]:
        """The scales `delta_l [B, width_l]` of every hidden layer (the PPNet gate path alone)."""
        return self.main.gate_values(self.ppnet_input(batch, o_ep))

    def forward(self, batch: Batch) -> Tensor:
        e = self.embedding.flat(batch)
        o_ep = self.epnet_gate(batch, e) * e
        return self.main(o_ep, self.ppnet_input(batch, o_ep))
