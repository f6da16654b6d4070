"""ple: Progressive Layered Extraction (Tang et al., RecSys 2020) used multi-scenario style: shared
experts plus experts of each scenario, stacked in levels of Customized Gate Control (CGC).

    level k (h^0_sh = h^0_s = e):
      A_sh  = shared_k(h_sh)                               shared experts, every row        [B, Es, d]
      A_s   = specific_{k,s}(h_s)                          scenario s's experts, its rows   [n_s, Ep, d]
      h_s  <- sum softmax(G_{k,s} h_s) * [A_sh; A_s]        gate of scenario s, its rows
      h_sh <- sum softmax(G_{k,sh} h_sh) * [A_sh; A_s]      shared gate (every level but the last)
    logit = tower_s(h_s^K)                                 tower of scenario s, its rows    [n_s, T]

Scenario s's experts, gates and tower run only on scenario s's rows (their weights stacked `[S, ...]`,
each row meeting its own scenario's over the batch's tiles, nn.towers), so they learn from that scenario
alone and a row's cost does not grow with S; the shared experts and the shared gates learn from every row.

Choices (the paper is multi-task, not multi-scenario):
- Scenarios play the part of PLE's tasks. With T tasks each scenario's tower has T outputs (one head per
  task), as in split_merge and mmoe.
- The paper's shared gate mixes the shared experts and *every* task's experts. Here a row's shared gate
  mixes the shared experts and its *own* scenario's experts only (the same count, Es + Ep, for every
  scenario): running another scenario's experts on a row would break "scenario modules see only their own
  rows" and cost S times the work. The shared stream thus still carries a little of each row's scenario.
- Gates are a single linear layer and a softmax over the input of their stream (`h_s` or `h_sh`).
- Every level's experts are the MLP `mlp` (its last width is d); the first level reads `e`.
- A hierarchical scenario (`level_sharing`): each combination's experts (expert j of a level value is its own
  part), gate and tower are a shared base plus per-level and own deltas (nn.towers, nn.levels).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import AfterValidator, Field
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.registry import ModelOptions, part, register, with_layers
from msrec.nn import FeatureEmbedding, MLPOptions, ScenarioRouting
from msrec.nn.levels import LevelSharingOptions, per_group, shared_levels
from msrec.nn.moe import ExpertGate, Experts, mix
from msrec.nn.towers import ScenarioLinear, ScenarioMLP, ScenarioTowers
from msrec.schema import FeatureSpec


class PLEOptions(LevelSharingOptions, ModelOptions):
    legacy = ModelOptions.legacy | {"tower_hidden": ("tower.hidden",), "tower_dropout": ("tower.dropout",),
                                    "activation": ("mlp.activation", "tower.activation")}
    search_space = ModelOptions.search_space | {"model.shared_experts": {"choices": [1, 2, 4]}, "model.levels": {"choices": [1, 2]},
                                               "model.tower.hidden": {"choices": [[32], [64], [128]]}}  # tuning's (docs/tuning.md)
    mlp: Annotated[MLPOptions, AfterValidator(with_layers)] = part([128, 64], dropout=0.2)
    """Each expert (its last width is the expert size d)."""
    levels: int = Field(2, ge=1)
    """Extraction levels (1 is CGC)."""
    shared_experts: int = Field(2, ge=1)
    """Experts shared by all scenarios, per level."""
    specific_experts: int = Field(1, ge=1)
    """Experts of each scenario, per level."""
    tower: MLPOptions = part([64], dropout=0.1)
    """Each scenario's tower, on its own rows."""


class ExtractionLevel(nn.Module):
    """One CGC level: shared experts, each scenario's experts and gate, and (but for the last level) the gate
    of the shared stream. A scenario's Ep experts are Ep groups of one stacked `ScenarioMLP` (group
    s * Ep + j), each row running through its own scenario's Ep groups."""

    def __init__(self, in_dim: int, options: PLEOptions, num_scenarios: int, last: bool, levels=None):
        super().__init__()
        o, ep = options, options.specific_experts
        self.shared = Experts(in_dim, o.mlp, o.shared_experts)
        self.specific = ScenarioMLP(in_dim, o.mlp, None, num_scenarios * ep,
                                    legacy=lambda prefix, g: f"{prefix}{g // ep}.experts.{g % ep}.",
                                    levels=None if levels is None else per_group(levels, ep), own=o.combination_part)
        n = o.shared_experts + ep
        self.gates = ScenarioLinear(in_dim, n, num_scenarios, legacy=lambda prefix, s: f"{prefix}{s}.linear.",
                                    levels=levels, own=o.combination_part)
        self.shared_gate = None if last else ExpertGate(in_dim, n)
        self.out_dim = self.shared.out_dim
        self.specific_experts = ep

    def forward(self, h_sh: Tensor, h_sc: Tensor, routing: ScenarioRouting,
                copies: ScenarioRouting) -> tuple[Tensor | None, Tensor, Tensor]:
        """New shared stream (None after the last level), new scenario stream, and the scenario gates' weights.
        `copies` routes the rows repeated Ep times to their scenario's Ep expert groups."""
        own = self.specific(h_sc.repeat_interleave(self.specific_experts, 0), copies)
        experts = torch.cat([self.shared(h_sh), own.unflatten(0, (-1, self.specific_experts))], 1)  # [B, Es + Ep, d]
        w = self.gates(h_sc, routing).softmax(-1)
        new_sh = None if self.shared_gate is None else mix(self.shared_gate(h_sh), experts)
        return new_sh, mix(w, experts), w


@register("ple", PLEOptions, "Shared and per-scenario experts in gated extraction levels, per-scenario towers (PLE)")
class PLE(nn.Module):
    def __init__(self, spec: FeatureSpec, options: PLEOptions):
        super().__init__()
        o = options
        self.num_scenarios = spec.num_scenarios
        self.embedding = FeatureEmbedding(spec, o.embed_dim, o.backbone)
        dims = [self.embedding.flat_dim] + [o.mlp.hidden[-1]] * (o.levels - 1)
        levels = shared_levels(spec, o)
        self.levels = nn.ModuleList(ExtractionLevel(dim, o, spec.num_scenarios, k == o.levels - 1, levels)
                                    for k, dim in enumerate(dims))
        self.towers = ScenarioTowers(o.mlp.hidden[-1], o.tower, spec.num_tasks, spec.num_scenarios, levels,
                                     o.combination_part)

    def _extract(self, batch: Batch) -> tuple[Tensor, list[Tensor], ScenarioRouting]:
        routing = ScenarioRouting.of(batch, self.num_scenarios)
        ep = self.levels[0].specific_experts
        copies = routing if ep == 1 else ScenarioRouting(
            (batch.scenario.unsqueeze(1) * ep + torch.arange(ep, device=batch.scenario.device)).flatten(),
            self.num_scenarios * ep, [n for n in routing.counts for _ in range(ep)])
        h_sh = h_sc = self.embedding.flat(batch)
        weights = []
        for level in self.levels:
            h_sh, h_sc, w = level(h_sh, h_sc, routing, copies)
            weights.append(w)
        return h_sc, weights, routing

    def gate_weights(self, batch: Batch) -> list[Tensor]:
        """Per level, `[B, Es + Ep]`: each row's scenario-gate weights over (shared, own scenario's) experts."""
        return self._extract(batch)[1]

    def forward(self, batch: Batch) -> Tensor:
        h, _, routing = self._extract(batch)
        return self.towers(h, routing)
