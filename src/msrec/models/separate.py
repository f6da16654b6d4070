"""separate: one independent model per scenario (the other baseline).

    logit(x) = MLP_s(e_s(x)),  s = scenario of x

Each scenario owns its embeddings and MLP and sees only its own rows, so a small scenario learns from
its own few rows alone. Rows are routed: model s runs only on scenario s's rows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.dnn import DNN
from msrec.models.registry import ModelOptions, register
from msrec.nn import ScenarioRouting
from msrec.schema import FeatureSpec


class SeparateOptions(ModelOptions):
    pass


@register("separate", SeparateOptions, "One independent model (embeddings + MLP) per scenario (baseline)")
class Separate(nn.Module):
    def __init__(self, spec: FeatureSpec, options: SeparateOptions):
        super().__init__()
        self.num_scenarios = spec.num_scenarios
        self.models = nn.ModuleList(DNN(spec, options) for _ in range(spec.num_scenarios))  # a dnn per scenario

    def forward(self, batch: Batch) -> Tensor:
        routing = ScenarioRouting.of(batch, self.num_scenarios)
        rows = torch.arange(batch.scenario.shape[0], device=batch.scenario.device)  # shape, not len: traceable
        parts = routing.split(rows)
        outs = [self.models[s](batch.select(idx)) for s, idx in enumerate(parts) if len(idx)]
        return routing.merge(outs)

