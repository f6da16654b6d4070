"""m2m: multi-scenario multi-task meta learning (M2M, Zhang et al. 2022): an MMoE whose expert
attention and task towers are meta units, networks whose weights are generated from the scenario.

    S       = MLP_s(z)                                        scenario knowledge representation
    X_i     = expert_i(e),  i = 1..E                          expert view
    a_{t,i} = v^T Meta_att(S)([X_i; tau_t]),  alpha_t = softmax_i(a_t)      meta attention
    r_t     = sum_i alpha_{t,i} X_i
    h <- act(Meta_{t,j}(S)(h)) + h,  j = 1..L,  h_0 = r_t    meta tower (residual)
    logit_t = w_t^T h_L + c_t

`Meta(S)` is a layer (or layers) whose weights and biases are `reshape(Linear(S))` (nn.meta.MetaMLP),
`tau_t` a learned task embedding. One BCE loss per task, summed with `train.task_weights`.

Choices (the paper leaves them open or is specific to its data):
- The paper's transformer over behaviour sequences is not part of the backbone: experts are MLPs over
  `e`. Attention runs over the E experts within a row, never across the batch rows.
- One meta attention unit (one hidden layer of `attention_hidden`, then `v`) is shared by the tasks; the
  task embedding makes it task-specific. Each task has its own meta tower.
- Binary tasks with a BCE loss (the paper's Poisson regression fits its count targets, not clicks).
- Weights are generated once per distinct scenario-indicator combination in the batch (see dynamic_weight).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import AfterValidator, Field
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.registry import ModelOptions, part, register, with_layers
from msrec.nn import MLP, FeatureEmbedding, MLPOptions
from msrec.nn.meta import ConditionGroups, MetaMLP, condition
from msrec.nn.mlp import ACTIVATIONS, Dropout
from msrec.schema import FeatureSpec


class M2MOptions(ModelOptions):
    search_space = ModelOptions.search_space | {"model.experts": {"choices": [2, 4, 8]}, "model.scenario_dim": {"choices": [16, 32, 64]}}  # tuning's (docs/tuning.md)
    mlp: Annotated[MLPOptions, AfterValidator(with_layers)] = part([128, 64], dropout=0.2)
    """Each expert, last width = expert size d (its activation and dropout serve the whole model)."""
    experts: int = Field(4, ge=1)
    """Number of experts E."""
    task_dim: int = Field(16, ge=1)
    """Size of the task embeddings."""
    scenario_dim: int = Field(32, ge=1)
    """Size of the scenario knowledge representation S."""
    attention_hidden: int = Field(32, ge=1)
    """Width of the meta attention unit."""
    tower_layers: int = Field(2, ge=0)
    """Residual meta layers per task tower."""


@register("m2m", M2MOptions, "Multi-task MMoE; expert attention and towers generated from the scenario (M2M)")
class M2M(nn.Module):
    def __init__(self, spec: FeatureSpec, options: M2MOptions):
        super().__init__()
        o, act = options, options.mlp.activation
        self.num_tasks = spec.num_tasks
        self.scenario_fields = list(spec.scenario_fields)
        self.embedding = FeatureEmbedding(spec, o.embed_dim, o.backbone)
        self.scenario_net = MLP(len(self.scenario_fields) * o.embed_dim, [o.scenario_dim], activation=act)
        self.experts = nn.ModuleList(MLP.of(self.embedding.flat_dim, o.mlp) for _ in range(o.experts))
        d = o.mlp.hidden[-1]
        self.task_embedding = nn.Parameter(torch.randn(spec.num_tasks, o.task_dim) * 0.1)
        self.attention = MetaMLP(o.scenario_dim, [d + o.task_dim, o.attention_hidden], act)
        self.v = nn.Linear(o.attention_hidden, 1, bias=False)
        self.towers = nn.ModuleList(
            nn.ModuleList(MetaMLP(o.scenario_dim, [d, d], act, final_activation=False)
                          for _ in range(o.tower_layers))
            for _ in range(spec.num_tasks))
        self.act = ACTIVATIONS[act]()
        self.dropout = Dropout(o.mlp.dropout)
        self.heads = nn.ModuleList(nn.Linear(d, 1) for _ in range(spec.num_tasks))

    def _attend(self, batch: Batch) -> tuple[Tensor, Tensor, ConditionGroups, Tensor]:
        e = self.embedding.flat(batch)
        groups, z = condition(self.embedding, batch, self.scenario_fields)
        s = self.scenario_net(z)  # [U, scenario_dim]
        x = torch.stack([expert(e) for expert in self.experts], 1)  # [B, E, d]
        B, E, _ = x.shape
        task = self.task_embedding.view(1, self.num_tasks, 1, -1).expand(B, -1, E, -1)
        pairs = torch.cat([x.unsqueeze(1).expand(-1, self.num_tasks, -1, -1), task], -1)  # [B, T, E, d + dt]
        alpha = torch.softmax(self.v(self.attention(pairs, s, groups)).squeeze(-1), -1)  # [B, T, E], over experts
        return alpha, x, groups, s

    def expert_weights(self, batch: Batch) -> Tensor:
        """`alpha [B, T, E]`: each task's attention over the experts, per row."""
        return self._attend(batch)[0]

    def forward(self, batch: Batch) -> Tensor:
        alpha, x, groups, s = self._attend(batch)
        r = alpha @ x  # [B, T, d]: per row, a weighted sum of that row's experts
        logits = []
        for t in range(self.num_tasks):
            h = r[:, t]
            for layer in self.towers[t]:
                h = self.act(layer(h, s, groups)) + h
            logits.append(self.heads[t](self.dropout(h)))
        return torch.cat(logits, 1)
