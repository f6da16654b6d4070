"""star: Star Topology Adaptive Recommender (Sheng et al., CIKM 2021).

    x      = PN_s(e)              partitioned normalization of the pooled, concatenated embeddings
    s_main = FCN_s(x)             star FCN, layer i of scenario s: W_s,i * W_i (element-wise), b_s,i + b_i
    s_aux  = MLP_aux(z)           auxiliary network over the scenario indicators (and chosen extra fields)
    logit  = s_main + s_aux

    PN_s(x) = (gamma * gamma_s) * (x - mean_s) / sqrt(var_s + eps) + (beta + beta_s)

The shared weights learn what every scenario has in common; each scenario's W_s / b_s (initialized to
ones / zeros, i.e. starting from the shared network) learn its own correction from its own rows only
(the FCN is routed: scenario s's layers run on its slice of the batch). PN normalizes each scenario by
its own statistics: in training those of its rows in the batch, in evaluation its own running mean/var,
so evaluation does not depend on batch composition. The auxiliary network gives the scenario indicator
a direct, shallow path to the logit, so the deep network need not learn the scenario's base rate.

Choices (as in the paper unless said): PN is applied once, to the FCN input `e` (the paper's
"Embedding -> Pooling & Concatenation -> PN -> Star FCN"), with batch-norm momentum 0.1; the output layer
is a star layer too; the auxiliary network reads the indicator embeddings from the shared embedding
table (the paper feeds the domain indicator "and other features"; `aux_fields` adds named sparse
fields); the two logits are summed before the sigmoid. Multi-task: both parts output T logits.

A hierarchical scenario (`data.scenario: [country, placement]`, `level_sharing`): the FCN's
`W_s = W_own[s] * W_country[c] * W_placement[p]` and `b_s` the sum of the same parts (nn.levels, nn.star);
partitioned normalization stays per combination.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.registry import ModelOptions, part, register, without_batch_norm
from msrec.nn import MLP, FeatureEmbedding, MLPOptions, ScenarioRouting
from msrec.nn.levels import LevelSharingOptions, shared_levels
from msrec.nn.norm import PartitionedNorm
from msrec.nn.star import StarFCN
from msrec.schema import FeatureSpec


class StarOptions(LevelSharingOptions, ModelOptions):
    # 0.1 accepted `batch_norm` and ignored it: its configs still load, the nested key is refused.
    legacy = ModelOptions.legacy | {"aux_hidden": ("aux.hidden",), "activation": ("mlp.activation", "aux.activation"),
                                    "batch_norm": ()}
    search_space = ModelOptions.search_space | {"model.aux.hidden": {"choices": [[16], [32], [64]]},
                                               "model.partitioned_norm": {"choices": [True, False]}}  # tuning's (docs/tuning.md)
    mlp: Annotated[MLPOptions, without_batch_norm("partitioned normalization is star's")] = part(
        [256, 128], dropout=0.2)
    """The star-topology FCN (shared weights times each scenario's)."""
    partitioned_norm: bool = True
    """Partitioned normalization of the FCN input (off: the raw embeddings feed the FCN)."""
    norm_momentum: float = Field(0.1, gt=0, le=1)
    """Momentum of the partitioned normalization's running statistics."""
    aux: MLPOptions = part([32])
    """The auxiliary network over the scenario indicators."""
    aux_fields: list[str] = Field(default_factory=list)
    """Sparse fields read by the auxiliary network besides the scenario indicators."""


@register("star", StarOptions,
          "Star topology FCN (shared * per-scenario weights), partitioned normalization, auxiliary network")
class Star(nn.Module):
    def __init__(self, spec: FeatureSpec, options: StarOptions):
        super().__init__()
        self.num_scenarios = spec.num_scenarios
        self.embedding = FeatureEmbedding(spec, options.embed_dim, options.backbone)
        dim = self.embedding.flat_dim
        self.norm = (PartitionedNorm(dim, spec.num_scenarios, momentum=options.norm_momentum)
                     if options.partitioned_norm else None)
        self.fcn = StarFCN(dim, options.mlp, spec.num_tasks, spec.num_scenarios, shared_levels(spec, options),
                           options.combination_part)
        self.aux_fields = list(dict.fromkeys([*spec.scenario_fields, *(spec.sparse_index(f) for f in options.aux_fields)]))
        self.aux = MLP.of(len(self.aux_fields) * options.embed_dim, options.aux, spec.num_tasks)

    def forward(self, batch: Batch) -> Tensor:
        e = self.embedding.flat(batch)
        if self.norm is not None:
            e = self.norm(e, batch.scenario)
        main = self.fcn(e, ScenarioRouting.of(batch, self.num_scenarios))
        return main + self.aux(self.embedding.select(batch, self.aux_fields))
