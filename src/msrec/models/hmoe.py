"""hmoe: Split&Merge whose towers are experts that every scenario's gate can consult (Li et al., 2020).

    h = MLP_bottom(e)
    S_BA = tower_B(h)            for every tower B and every row of scenario A
    w_A  = softmax_B(gate_A([h; z]))                       (one softmax over the S towers per task)
    logit_A = sum_B w_AB * S_BA,   with S_BA (B != A) under stop-gradient

A small scenario borrows the judgement of the other scenarios' towers, weighted by a gate it learns,
while tower B is still trained only by scenario B's rows: the cross scores are computed under
`torch.no_grad`, so tower B gets no gradient from A's rows, whereas gate A (through the weights) and
the shared bottom (through S_AA and the gate) do. This is the one model whose towers see every row:
each tower runs once per row (its own rows with gradient, the others forward only).

Choices: the towers' scores are logits and the mixture is over logits (the model returns logits; a
mixture of probabilities would need a clamped inverse sigmoid); each gate is a linear layer over `h`
(and the indicator embeddings `z` with `gate_indicators`) with zero-initialized weights and a bias that
puts `gate_init_own` (0.8) of the weight on the scenario's own tower, so training starts near
Split&Merge (a uniform start gives the own tower only 1/S of its rows' gradient); one softmax per
task. Tower dropout applies to foreign rows too (they are scored in the same training pass); towers have
no batch norm, so foreign rows never touch a tower's state.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.registry import ModelOptions, part, register, without_batch_norm
from msrec.nn import MLP, FeatureEmbedding, MLPOptions, ScenarioRouting
from msrec.nn.towers import ScenarioTowers
from msrec.schema import FeatureSpec


class HMoEOptions(ModelOptions):
    legacy = ModelOptions.legacy | {"tower_hidden": ("tower.hidden",), "tower_dropout": ("tower.dropout",),
                                    "activation": ("mlp.activation", "tower.activation")}
    search_space = ModelOptions.search_space | {"model.tower.hidden": {"choices": [[32], [64], [128]]},
                                               "model.gate_init_own": {"low": 0.5, "high": 0.95}}  # tuning's (docs/tuning.md)
    mlp: MLPOptions = part([256, 128], dropout=0.2)
    """The shared bottom, on every row."""
    tower: Annotated[MLPOptions, without_batch_norm("a tower also scores other scenarios' rows")] = part(
        [64], dropout=0.1)
    """Each scenario's tower, scoring every row."""
    gate_indicators: bool = False
    """Whether the gates also read the scenario-indicator embeddings `z` besides `h`."""
    gate_init_own: float = Field(0.8, gt=0, lt=1)
    """Initial weight of a scenario's own tower in its gate (the rest shared equally by the others)."""


@register("hmoe", HMoEOptions,
          "Per-scenario towers score every row (stop-gradient across scenarios), mixed by per-scenario gates")
class HMoE(nn.Module):
    def __init__(self, spec: FeatureSpec, options: HMoEOptions):
        super().__init__()
        self.num_scenarios, self.num_tasks = spec.num_scenarios, spec.num_tasks
        self.scenario_fields = list(spec.scenario_fields) if options.gate_indicators else []
        self.embedding = FeatureEmbedding(spec, options.embed_dim, options.backbone)
        self.bottom = MLP.of(self.embedding.flat_dim, options.mlp)
        self.towers = ScenarioTowers(self.bottom.out_dim, options.tower, spec.num_tasks, spec.num_scenarios)
        gate_dim = self.bottom.out_dim + len(self.scenario_fields) * options.embed_dim
        self.gates = nn.ModuleList(nn.Linear(gate_dim, spec.num_scenarios * spec.num_tasks)
                                   for _ in range(spec.num_scenarios))
        # Zero weights, and a bias that starts each gate at `gate_init_own` on its own tower: training
        # starts close to Split&Merge (the own tower gets most of the gradient) and the gate learns to borrow.
        S = spec.num_scenarios
        own = math.log(options.gate_init_own * max(S - 1, 1) / (1 - options.gate_init_own)) if S > 1 else 0.0
        for s, gate in enumerate(self.gates):
            nn.init.zeros_(gate.weight)
            with torch.no_grad():
                gate.bias.view(S, spec.num_tasks).zero_()[s] = own

    def gate_weights(self, grouped: tuple[Tensor, ...]) -> Tensor:
        """Gate s on scenario s's rows: `[N, S, T]` softmax weights over the towers, in grouped order."""
        parts = [self.gates[s](x).unflatten(1, (self.num_scenarios, self.num_tasks))
                 for s, x in enumerate(grouped) if len(x)]
        return torch.cat(parts, 0).softmax(1)

    def forward(self, batch: Batch) -> Tensor:
        h = self.bottom(self.embedding.flat(batch))
        routing = ScenarioRouting.of(batch, self.num_scenarios)
        gate_in = h if not self.scenario_fields else torch.cat(
            [h, self.embedding.select(batch, self.scenario_fields)], 1)
        scores = self.towers.cross_scores(routing.split(h))  # [N, S, T], rows grouped by scenario
        mixed = (self.gate_weights(routing.split(gate_in)) * scores).sum(1)
        return routing.merge([mixed])
