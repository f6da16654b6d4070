"""split_merge: shared bottom, split by scenario, one tower per scenario, merge, one loss.

    h = MLP_bottom(e)                      on every row
    logit(x) = tower_s(h(x)),  s = scenario of x

The bottom (embeddings + MLP) learns from every row what the scenarios share; tower s runs only on
scenario s's rows (`ScenarioRouting`: group once, run each tower on its slice, put the rows back in
order), so it learns only from them and costs one tower pass per row. One BCE loss covers the merged
batch. Multi-task: each tower has one output per task (one head per task on a per-scenario tower).

Choices: `hidden` is the bottom MLP, `tower_hidden` the towers' hidden widths; the bottom ends with its
last hidden activation (no output layer), towers end with a linear layer of width T.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.registry import ModelOptions, register
from msrec.nn import MLP, FeatureEmbedding, ScenarioRouting
from msrec.nn.towers import ScenarioTowers
from msrec.schema import FeatureSpec


class SplitMergeOptions(ModelOptions):
    hidden: list[int] = Field(default_factory=lambda: [256, 128])
    """Hidden widths of the shared bottom MLP."""
    tower_hidden: list[int] = Field(default_factory=lambda: [64])
    """Hidden widths of each scenario's tower."""
    tower_dropout: float = Field(0.1, ge=0, le=1)


@register("split_merge", SplitMergeOptions,
          "Shared bottom on all rows, one tower per scenario on its own rows, merged in row order")
class SplitMerge(nn.Module):
    def __init__(self, spec: FeatureSpec, options: SplitMergeOptions):
        super().__init__()
        self.num_scenarios = spec.num_scenarios
        self.embedding = FeatureEmbedding(spec, options.embed_dim)
        self.bottom = MLP(self.embedding.flat_dim, options.hidden, None, options.dropout, options.activation,
                          options.batch_norm)
        self.towers = ScenarioTowers(self.bottom.out_dim, options.tower_hidden, spec.num_tasks, spec.num_scenarios,
                                     options.tower_dropout, options.activation)

    def forward(self, batch: Batch) -> Tensor:
        h = self.bottom(self.embedding.flat(batch))
        return self.towers(h, ScenarioRouting.of(batch, self.num_scenarios))
