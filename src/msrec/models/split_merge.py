"""split_merge: shared bottom, split by scenario, one tower per scenario, merge, one loss.

    h = MLP_bottom(e)                      on every row
    logit(x) = tower_s(h(x)),  s = scenario of x

The bottom (embeddings + MLP) learns from every row what the scenarios share; tower s runs only on
scenario s's rows (the towers' weights are stacked `[S, ...]` and each row meets its own scenario's in one
batched matmul over the batch's tiles, nn.towers), so it learns only from them and each row costs one
tower pass, whatever the number of scenarios. One BCE loss covers the merged
batch. Multi-task: each tower has one output per task (one head per task on a per-scenario tower).

Choices: `mlp` is the bottom MLP, `tower` each scenario's tower; the bottom ends with its last hidden
activation (no output layer), towers end with a linear layer of width T. A hierarchical scenario
(`level_sharing`): each combination's tower is a shared base plus its levels' deltas and its own (nn.towers).
"""

from __future__ import annotations

from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.registry import ModelOptions, part, register
from msrec.nn import MLP, FeatureEmbedding, MLPOptions, ScenarioRouting
from msrec.nn.levels import LevelSharingOptions, shared_levels
from msrec.nn.towers import ScenarioTowers
from msrec.schema import FeatureSpec


class SplitMergeOptions(LevelSharingOptions, ModelOptions):
    legacy = ModelOptions.legacy | {"tower_hidden": ("tower.hidden",), "tower_dropout": ("tower.dropout",),
                                    "activation": ("mlp.activation", "tower.activation")}
    search_space = ModelOptions.search_space | {"model.tower.hidden": {"choices": [[32], [64], [128]]}}  # tuning's (docs/tuning.md)
    mlp: MLPOptions = part([256, 128], dropout=0.2)
    """The shared bottom, on every row."""
    tower: MLPOptions = part([64], dropout=0.1)
    """Each scenario's tower, on its own rows."""


@register("split_merge", SplitMergeOptions,
          "Shared bottom on all rows, one tower per scenario on its own rows, merged in row order")
class SplitMerge(nn.Module):
    def __init__(self, spec: FeatureSpec, options: SplitMergeOptions):
        super().__init__()
        self.num_scenarios = spec.num_scenarios
        self.embedding = FeatureEmbedding(spec, options.embed_dim, options.backbone)
        self.bottom = MLP.of(self.embedding.flat_dim, options.mlp)
        self.towers = ScenarioTowers(self.bottom.out_dim, options.tower, spec.num_tasks, spec.num_scenarios,
                                     shared_levels(spec, options), options.combination_part)

    def forward(self, batch: Batch) -> Tensor:
        h = self.bottom(self.embedding.flat(batch))
        return self.towers(h, ScenarioRouting.of(batch, self.num_scenarios))
