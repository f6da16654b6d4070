"""separate: one independent model per scenario (the other baseline).

    logit(x) = MLP_s(e_s(x)),  s = scenario of x

Each scenario owns its embeddings and MLP and sees only its own rows, so a small scenario learns from
its own few rows alone.

Stored stacked, so that a batch's cost does not grow with S: one embedding table in which id k of a field
has S rows, scenario s's at `k * S + s` (a row looks up its own scenario's embeddings only), and the S
MLPs' weights stacked `[S, ...]` and applied over the batch's tiles (nn.towers). The table stays row-sparse
(a step updates the rows its batch looked up), and so do the stacked MLPs under `train.scenario_updates:
row_sparse` (a step updates the scenarios its batch holds; docs/scenarios.md). A backbone (`model.backbone`) other
than the plain concatenation is shared by the scenarios. Runs written with one `dnn` per scenario
(`models.<s>.*`) load into the stacks.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.dnn import DNN
from msrec.models.registry import ModelOptions, register
from msrec.nn import FeatureEmbedding, ScenarioRouting
from msrec.nn.towers import ScenarioMLP
from msrec.schema import FeatureSpec


class SeparateOptions(ModelOptions):
    pass


@register("separate", SeparateOptions, "One independent model (embeddings + MLP) per scenario (baseline)")
class Separate(nn.Module):
    def __init__(self, spec: FeatureSpec, options: SeparateOptions):
        super().__init__()
        self.spec, self.options = spec, options
        S = self.num_scenarios = spec.num_scenarios
        per_scenario = dataclasses.replace(spec, sparse_vocab=[v * S for v in spec.sparse_vocab],
                                           list_vocab=[v * S for v in spec.list_vocab])
        self.embedding = FeatureEmbedding(per_scenario, options.embed_dim, options.backbone)
        self.mlp = ScenarioMLP(self.embedding.flat_dim, options.mlp, spec.num_tasks, S,
                               legacy=lambda prefix, s: f"{prefix}{s}.")

    def own_ids(self, batch: Batch) -> Batch:
        """The batch with each id pointing at its scenario's embedding row (`k * S + s`; list padding stays 0)."""
        S, s = self.num_scenarios, batch.scenario.unsqueeze(1)
        return dataclasses.replace(batch, sparse=batch.sparse.long() * S + s,
                                   lists=[torch.where(ids > 0, ids * S + s, 0) for ids in batch.lists])

    def forward(self, batch: Batch) -> Tensor:
        return self.mlp(self.embedding.flat(self.own_ids(batch)), ScenarioRouting.of(batch, self.num_scenarios))

    def scenario_model(self, s: int) -> DNN:
        """Scenario s's model as an ordinary `dnn` (a copy, in evaluation mode; for inspection and tests)."""
        dnn = DNN(self.spec, self.options).eval()
        table = self.embedding.table.weight.detach()
        dnn.embedding.table.weight.data.copy_(table.view(-1, self.num_scenarios, table.shape[1])[:, s])
        dnn.mlp = self.mlp.scenario(s)
        return dnn

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A run written with one `dnn` per scenario: its tables interleaved into the one table (row k of
        scenario s at k * S + s); its MLPs (`models.<s>.mlp.*`, renamed `mlp.<s>.*`) stacked by `ScenarioMLP`."""
        old = [f"{prefix}models.{s}.embedding.table.weight" for s in range(self.num_scenarios)]
        if old[0] in state_dict:
            tables = torch.stack([state_dict.pop(key) for key in old], 1)  # [V, S, D]
            state_dict[f"{prefix}embedding.table.weight"] = tables.flatten(0, 1)
            for key in [k for k in state_dict if k.startswith(f"{prefix}models.")]:
                s, rest = key[len(f"{prefix}models."):].split(".mlp.", 1)
                state_dict[f"{prefix}mlp.{s}.{rest}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
