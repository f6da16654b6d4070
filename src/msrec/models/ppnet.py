"""ppnet: parameter-personalized gates on every hidden layer of the main MLP (PPNet of PEPNet,
Chang et al. 2023).

    g     = [emb'(z); emb'(personal ids); stop_gradient(e)]        (the gate input)
    h_0   = e
    h_l   = delta_l(g) * act(W_l h_{l-1} + b_l),   delta_l(g) = 2 * sigmoid(W'_l relu(V_l g + c_l) + b'_l)
    logit = W_out h_L + b_out

Choices (from the paper, where the spec leaves them open):
- The gate has its own embeddings (`emb'`) of the scenario-indicator fields and of the personalization
  ids (the paper's "personalized priors"): they learn from the gate path alone.
- Only the gate's copy of the main embeddings `e` is detached: the gates cannot pull the shared
  embeddings, while the main path still trains every embedding, the scenario's included (the pitfall of
  detaching `e` everywhere leaves the scenario embedding untrained).
- The gate scales a layer's activations (after the non-linearity, before dropout), one gate per hidden
  layer, `gamma = 2`, output layer zero-initialised so every gate starts at 1 (the model starts as `dnn`).
- `personal_fields` defaults to the fields named like user / item ids (user_id, item_id, movie_id, ...);
  if there are none, the two non-scenario sparse fields with the largest vocabularies (ids are usually the
  biggest fields). An empty list uses `z` and `e` only.
"""

from __future__ import annotations

import re

import torch
from pydantic import Field
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.registry import ModelOptions, part, register
from msrec.nn import FeatureEmbedding, MLPOptions
from msrec.nn.gates import GatedMLP, SubsetEmbedding
from msrec.schema import FeatureSpec

ID_FIELD = re.compile(r"^(user|item|movie|video|news|product|goods|ad|author|u|i)_?id$", re.IGNORECASE)


class PPNetOptions(ModelOptions):
    legacy = ModelOptions.legacy | {"gate_hidden": ("gate.hidden",)}  # 0.1's gates were ReLU whatever `activation`
    search_space = ModelOptions.search_space | {"model.gamma": {"low": 1.0, "high": 3.0},
                                               "model.gate.hidden": {"choices": [[32], [64], [128]]}}  # tuning's (docs/tuning.md)
    mlp: MLPOptions = part([256, 128], dropout=0.2)
    """The main MLP, one gate per hidden layer."""
    gate: MLPOptions = part([64])
    """Each hidden layer's gate."""
    personal_fields: list[str] | None = None
    """Sparse fields embedded for the gate (None: the user/item id fields, else the two largest)."""
    gate_embed_dim: int | None = Field(None, ge=1)
    """Size of the gate's own embeddings (None: `embed_dim`)."""
    gamma: float = Field(2.0, gt=0)
    """The largest scale."""


def personal_field_indices(spec: FeatureSpec, names: list[str] | None) -> list[int]:
    if names is not None:
        return [spec.sparse_index(n) for n in names]
    found = [i for i, n in enumerate(spec.sparse_fields) if ID_FIELD.match(n)]
    if found:
        return found
    others = [i for i in range(len(spec.sparse_fields)) if i not in spec.scenario_fields]
    return sorted(sorted(others, key=lambda i: -spec.sparse_vocab[i])[:2])


@register("ppnet", PPNetOptions, "Hidden-layer gates from scenario and ids over stop-gradient embeddings (PPNet)")
class PPNet(nn.Module):
    def __init__(self, spec: FeatureSpec, options: PPNetOptions):
        super().__init__()
        o = options
        self.embedding = FeatureEmbedding(spec, o.embed_dim, o.backbone)
        gate_fields = list(dict.fromkeys([*spec.scenario_fields, *personal_field_indices(spec, o.personal_fields)]))
        self.gate_embedding = SubsetEmbedding(spec, gate_fields, o.gate_embed_dim or o.embed_dim)
        gate_in = self.gate_embedding.out_dim + self.embedding.flat_dim
        self.main = GatedMLP(self.embedding.flat_dim, o.mlp, spec.num_tasks, gate_in, o.gate, o.gamma)

    def gate_input(self, batch: Batch, e: Tensor) -> Tensor:
        """`g = [emb'(z); emb'(personal ids); stop_gradient(e)]`."""
        return torch.cat([self.gate_embedding(batch.sparse), e.detach()], 1)

    def gate_values(self, batch: Batch) -> list[Tensor]:
        """The scales `delta_l [B, width_l]` of every hidden layer (the gate path alone)."""
        return self.main.gate_values(self.gate_input(batch, self.embedding.flat(batch)))

    def forward(self, batch: Batch) -> Tensor:
        e = self.embedding.flat(batch)
        return self.main(e, self.gate_input(batch, e))
