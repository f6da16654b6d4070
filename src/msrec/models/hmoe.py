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

Cost. Towers and gates are stacked per scenario (nn.towers). A row costs one tower pass with gradient
(its own) and S - 1 forward-only passes, and scenario A's gate has S * T outputs: S towers per row and
S^2 * T * gate width gate parameters (at S = 1000 and the default 128-wide `h`: 128M), so full HMoE is for
tens of scenarios. `top_k: k` bounds it: gate A mixes k towers only, its own and the towers of the k - 1
largest other scenarios (rows counted over training, a buffer saved with the model: the best-trained
towers, the ones a small scenario gains from borrowing), so a row costs k tower passes and the gates
S * k * T * width parameters, whatever S (docs/scenarios.md).

A hierarchical scenario (`level_sharing`): the towers are a shared base plus per-level and own deltas
(nn.towers); the gates stay per combination (gate A's output b weighs tower b: a quantity of the pair of
combinations, which no level part of A alone can hold).
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
from msrec.nn.borrowing import largest_others
from msrec.nn.levels import LevelSharingOptions, shared_levels
from msrec.nn.towers import ScenarioLinear, ScenarioTowers
from msrec.schema import FeatureSpec


class HMoEOptions(LevelSharingOptions, ModelOptions):
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
    top_k: int | None = Field(None, ge=1)
    """Bounded variant: each gate mixes its own tower and the k - 1 largest other scenarios' (None: all S)."""


@register("hmoe", HMoEOptions,
          "Per-scenario towers score every row (stop-gradient across scenarios), mixed by per-scenario gates")
class HMoE(nn.Module):
    def __init__(self, spec: FeatureSpec, options: HMoEOptions):
        super().__init__()
        self.num_scenarios, self.num_tasks = spec.num_scenarios, spec.num_tasks
        self.scenario_fields = list(spec.scenario_fields) if options.gate_indicators else []
        self.embedding = FeatureEmbedding(spec, options.embed_dim, options.backbone)
        self.bottom = MLP.of(self.embedding.flat_dim, options.mlp)
        self.towers = ScenarioTowers(self.bottom.out_dim, options.tower, spec.num_tasks, spec.num_scenarios,
                                     shared_levels(spec, options), options.combination_part)
        gate_dim = self.bottom.out_dim + len(self.scenario_fields) * options.embed_dim
        S = spec.num_scenarios
        self.top_k = min(options.top_k, S) if options.top_k is not None else None
        mixed = self.top_k or S  # towers each gate mixes
        if self.top_k is not None:  # training rows seen per scenario: who the largest scenarios are
            self.register_buffer("rows_seen", torch.zeros(S))
        self.gates = ScenarioLinear(gate_dim, mixed * spec.num_tasks, S, legacy=lambda prefix, s: f"{prefix}{s}.")
        # Zero weights, and a bias that starts each gate at `gate_init_own` on its own tower: training
        # starts close to Split&Merge (the own tower gets most of the gradient) and the gate learns to borrow.
        own = (math.log(options.gate_init_own * (mixed - 1) / (1 - options.gate_init_own)) if mixed > 1 else 0.0)
        with torch.no_grad():
            self.gates.weight.zero_()
            bias = self.gates.bias.view(S, mixed, spec.num_tasks).zero_()
            if self.top_k is None:
                bias[torch.arange(S), torch.arange(S)] = own
            else:
                bias[:, 0] = own  # slot 0 is the scenario's own tower

    def candidates(self) -> Tensor:
        """`[S, k - 1]`: each scenario's borrowed towers, the largest other scenarios by rows seen."""
        return largest_others(self.rows_seen, self.top_k)

    def gate_weights(self, gate_in: Tensor, routing: ScenarioRouting) -> Tensor:
        """Each row's gate (its scenario's): `[B, mixed towers, T]` softmax weights (slot 0 the own tower with
        `top_k`, tower b at slot b otherwise)."""
        return self.gates(gate_in, routing).unflatten(1, (-1, self.num_tasks)).softmax(1)

    def scores(self, h: Tensor, scenario: Tensor, routing: ScenarioRouting) -> Tensor:
        """`[B, mixed towers, T]`: the towers' logits for each row, the row's own tower with gradient, the
        others under `torch.no_grad` (HMoE's stop-gradient)."""
        own = self.towers(h, routing).unsqueeze(1)  # [B, 1, T]
        if self.top_k is None:
            with torch.no_grad():
                every = self.towers.every(h)  # [B, S, T]
            return every.scatter(1, scenario.view(-1, 1, 1).expand(-1, 1, self.num_tasks), own)
        if self.top_k == 1:
            return own
        borrowed = self.candidates().index_select(0, scenario)  # [B, k - 1]
        with torch.no_grad():
            pairs = ScenarioRouting(borrowed.flatten(), self.num_scenarios)
            foreign = self.towers(h.repeat_interleave(self.top_k - 1, 0), pairs).unflatten(0, (-1, self.top_k - 1))
        return torch.cat([own, foreign], 1)

    def forward(self, batch: Batch) -> Tensor:
        h = self.bottom(self.embedding.flat(batch))
        if self.top_k is not None and self.training:
            self.rows_seen += torch.bincount(batch.scenario, minlength=self.num_scenarios).to(self.rows_seen.dtype)
        routing = ScenarioRouting.of(batch, self.num_scenarios)
        gate_in = h if not self.scenario_fields else torch.cat(
            [h, self.embedding.select(batch, self.scenario_fields)], 1)
        return (self.gate_weights(gate_in, routing) * self.scores(h, batch.scenario, routing)).sum(1)
