"""sar_net: Scenario-Aware Ranking Network (Shen et al., CIKM 2021, "SAR-Net ... in Hundreds of Travel
Scenarios").

    x     = gamma_s * e + beta_s                          scenario-specific transformation (scale and shift)
    O_sh  = [shared_1(x); ...; shared_Es(x)]              shared experts, every row                [B, Es, d]
    O_sp  = [specific_s,1(x); ...; specific_s,Ep(x)]      scenario s's own experts, its rows only   [B, Ep, d]
    c     = 2 * sigmoid(MLP_fc(b))                         fairness coefficient of each expert       [B, Es+Ep]
    w     = softmax(W_g [x; z] + b_g)                      scenario-aware gate over the experts      [B, Es+Ep]
    logit = tower(sum_i w_i * c_i * O_i)                                                              [B, T]

Every row trains the shared experts; scenario s's transformation and experts learn from s's rows only (its
parameters are stacked `[S, ...]`, the experts applied over the batch's tiles of one scenario each,
`nn.towers`). The gate reads the transformed input and the scenario-indicator embeddings `z`, so the same
row is weighted differently in each scenario. The debiasing network reweighs each expert's output by a coefficient in [0, 2] learnt from
the bias-related fields `b` (the paper's Fairness Coefficient: how much a sample's expert outputs count).

Choices (the paper's travel platform has what MovieLens lacks, and leaves some details open):
- The paper's two attention modules over the user's behaviour sequence (modulated by scenario and item
  features) are not built: msrec batches carry no behaviour sequences (multi-hot lists are mean-pooled by
  the shared embedding). SAR-Net here starts at its scenario-specific transformation.
- The transformation is an element-wise scale and shift of `e` per scenario (`gamma_s`, `beta_s`, starting
  at 1 and 0), applied to every unit of `e` (embeddings and dense values).
- Debias experts: the paper's bias features are its promotion / intervention signals; `bias_fields` names
  such fields, and by default the scenario-indicator fields are used (the spec's "the scenario's fairness
  coefficient"). One coefficient per expert and row; the network's output layer starts at zero, so every
  coefficient starts at 1. It applies in training and evaluation alike.
- Experts are MLPs ending with their last hidden activation (`expert`, last width d; with `batch_norm`, a
  scenario's experts normalise by its own statistics); a tower with T outputs maps the mixture to the
  logits (multi-task: one head per task).
- With scale 1, shift 0, one expert and coefficients 1, the model is exactly the MLP `tower(expert(e))`.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import AfterValidator, Field, model_validator
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.registry import ModelOptions, part, register, with_layers
from msrec.nn import MLP, FeatureEmbedding, MLPOptions, ScenarioRouting
from msrec.nn.gates import ScaleGate
from msrec.nn.moe import Experts, mix
from msrec.nn.towers import ScenarioMLP
from msrec.schema import FeatureSpec


class SARNetOptions(ModelOptions):
    mlp: MLPOptions = part([64], dropout=0.1)
    """The tower over the experts' mixture (T outputs)."""
    expert: Annotated[MLPOptions, AfterValidator(with_layers)] = part([128, 64], dropout=0.2)
    """Each expert, shared or scenario-specific (its last width is the expert size d)."""
    shared_experts: int = Field(4, ge=0)
    """Experts shared by all scenarios."""
    specific_experts: int = Field(1, ge=0)
    """Experts of each scenario (a row uses its own scenario's)."""
    debias: MLPOptions = part([16])
    """The debiasing network (fairness coefficient of each expert)."""
    bias_fields: list[str] | None = None
    """Sparse fields read by the debiasing network (None: the scenario-indicator fields)."""

    @model_validator(mode="after")
    def _some_expert(self) -> SARNetOptions:
        if self.shared_experts + self.specific_experts < 1:
            raise ValueError("`shared_experts` + `specific_experts` must be at least 1")
        return self


@register("sar_net", SARNetOptions,
          "Scenario scale/shift of the input, shared + per-scenario experts, scenario-aware gate, debias coefficients")
class SARNet(nn.Module):
    def __init__(self, spec: FeatureSpec, options: SARNetOptions):
        super().__init__()
        o = options
        self.num_scenarios = spec.num_scenarios
        self.embedding = FeatureEmbedding(spec, o.embed_dim, o.backbone)
        dim = self.embedding.flat_dim
        self.gamma = nn.Parameter(torch.ones(spec.num_scenarios, dim))
        self.beta = nn.Parameter(torch.zeros(spec.num_scenarios, dim))
        self.shared = Experts(dim, o.expert, o.shared_experts)
        self.specific = nn.ModuleList(ScenarioMLP(dim, o.expert, None, spec.num_scenarios)
                                      for _ in range(o.specific_experts))
        num = o.shared_experts + o.specific_experts
        self.scenario_fields = list(spec.scenario_fields)
        self.gate = nn.Linear(dim + len(self.scenario_fields) * o.embed_dim, num)
        self.bias_fields = ([spec.sparse_index(f) for f in o.bias_fields] if o.bias_fields is not None
                            else list(spec.scenario_fields))
        self.debias = ScaleGate(len(self.bias_fields) * o.embed_dim, num, o.debias)
        self.tower = MLP.of(o.expert.hidden[-1], o.mlp, spec.num_tasks)

    def transform(self, batch: Batch) -> Tensor:
        """`x = gamma_s * e + beta_s`, each row with its own scenario's scale and shift."""
        return self.gamma[batch.scenario] * self.embedding.flat(batch) + self.beta[batch.scenario]

    def experts(self, batch: Batch, x: Tensor) -> Tensor:
        """`[B, Es + Ep, d]`: the shared experts, then the row's own scenario's experts."""
        outs = [self.shared(x)] if self.shared.num else []
        if len(self.specific):
            routing = ScenarioRouting.of(batch, self.num_scenarios)
            tiles = routing.pack(x)
            outs.append(routing.unpack(torch.stack([expert.tiles(tiles, routing) for expert in self.specific], -2)))
        return torch.cat(outs, 1)

    def gate_weights(self, batch: Batch, x: Tensor | None = None) -> Tensor:
        """`[B, Es + Ep]`: softmax weights of each row over its experts."""
        x = self.transform(batch) if x is None else x
        return torch.softmax(self.gate(torch.cat([x, self.embedding.select(batch, self.scenario_fields)], 1)), -1)

    def fairness(self, batch: Batch) -> Tensor:
        """`[B, Es + Ep]`: each expert's fairness coefficient in [0, 2]."""
        return self.debias(self.embedding.select(batch, self.bias_fields))

    def forward(self, batch: Batch) -> Tensor:
        x = self.transform(batch)
        weights = self.gate_weights(batch, x) * self.fairness(batch)
        return self.tower(mix(weights, self.experts(batch, x)))
