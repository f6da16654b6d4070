"""mmoe: Multi-gate Mixture-of-Experts (Ma et al., KDD 2018) used multi-scenario style: the scenarios
play the part of MMoE's tasks.

    X     = [expert_1(e); ...; expert_E(e)]          shared experts, every row        [B, E, d]
    w_s   = softmax(W_s e + b_s)                      gate of scenario s, its rows      [n_s, E]
    logit = tower_s(sum_i w_{s,i} X_i)                tower of scenario s, its rows     [n_s, T]

Every row trains the shared experts (and embeddings); gate s and tower s run only on scenario s's rows
(their weights stacked `[S, ...]`, each row meeting its own scenario's over the batch's tiles, nn.towers),
so they learn from that scenario alone and each row costs one gate and one tower pass, whatever S.

Choices (the paper is multi-task, not multi-scenario):
- One gate and one tower per scenario; with T tasks the tower has T outputs (one head per task on the
  scenario's tower, as in split_merge), not one gate per (scenario, task): the experts are shared by
  scenarios, which is where this structure is compared in the multi-scenario literature.
- The gate reads the model input `e` (as in the paper); it is a single linear layer and a softmax.
- Experts are MLPs over `e` ending with their last hidden activation (`mlp`; the last width is d).
- A hierarchical scenario (`level_sharing`): gates and towers are a shared base plus per-level and own
  deltas (nn.towers).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.registry import ModelOptions, part, register, with_layers
from msrec.nn import FeatureEmbedding, MLPOptions, ScenarioRouting
from msrec.nn.levels import LevelSharingOptions, shared_levels
from msrec.nn.moe import Experts, mix
from msrec.nn.towers import ScenarioLinear, ScenarioTowers
from msrec.schema import FeatureSpec


class MMoEOptions(LevelSharingOptions, ModelOptions):
    legacy = ModelOptions.legacy | {"tower_hidden": ("tower.hidden",), "tower_dropout": ("tower.dropout",),
                                    "activation": ("mlp.activation", "tower.activation")}
    search_space = ModelOptions.search_space | {"model.experts": {"choices": [2, 4, 8]}, "model.tower.hidden": {"choices": [[32], [64], [128]]}}  # tuning's (docs/tuning.md)
    mlp: Annotated[MLPOptions, AfterValidator(with_layers)] = part([128, 64], dropout=0.2)
    """Each expert (its last width is the expert size d)."""
    experts: int = Field(4, ge=1)
    """Number of shared experts E."""
    tower: MLPOptions = part([64], dropout=0.1)
    """Each scenario's tower, on its own rows."""


@register("mmoe", MMoEOptions, "Shared experts; one softmax gate and one tower per scenario on its own rows (MMoE)")
class MMoE(nn.Module):
    def __init__(self, spec: FeatureSpec, options: MMoEOptions):
        super().__init__()
        o = options
        self.num_scenarios = spec.num_scenarios
        self.embedding = FeatureEmbedding(spec, o.embed_dim, o.backbone)
        self.experts = Experts(self.embedding.flat_dim, o.mlp, o.experts)
        levels = shared_levels(spec, o)
        self.gates = ScenarioLinear(self.embedding.flat_dim, o.experts, spec.num_scenarios,
                                    legacy=lambda prefix, s: f"{prefix}{s}.linear.",  # runs with a gate per scenario
                                    levels=levels, own=o.combination_part)
        self.towers = ScenarioTowers(self.experts.out_dim, o.tower, spec.num_tasks, spec.num_scenarios, levels,
                                     o.combination_part)

    def gate_weights(self, batch: Batch, routing: ScenarioRouting | None = None) -> Tensor:
        """`[B, E]`: each row's weights over the experts, from its own scenario's gate."""
        routing = routing or ScenarioRouting.of(batch, self.num_scenarios)
        return self.gates(self.embedding.flat(batch), routing).softmax(-1)

    def forward(self, batch: Batch) -> Tensor:
        e = self.embedding.flat(batch)
        routing = ScenarioRouting.of(batch, self.num_scenarios)
        weights = self.gates(e, routing).softmax(-1)
        return self.towers(mix(weights, self.experts(e)), routing)
