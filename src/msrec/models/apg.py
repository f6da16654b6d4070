"""apg: Adaptive Parameter Generation network (Yan et al., NeurIPS 2022).

    z        = [emb(indicator_1); ...; emb(condition field_1); ...]      the condition
    S_l(z)   = reshape(G_l(z), K, K)                                     layer l's generated core
    h_l      = act(h_{l-1} U_l S_l(z) V_l + b_l)                         U_l [in, K], V_l [K, out] shared
    logit    = W_out h_L + b_out                                         T outputs

Each hidden layer's weight `W_l(z) = U_l S_l(z) V_l` is generated for the condition, in APG's low-rank
form: only the small `K x K` core depends on the condition, the factors `U_l`, `V_l` are shared by every
condition ("decomposition feedback" / parameter sharing), and the layer runs as `((h U) S) V`, never forming
`W`. With `overparam: P`, `U = U_l U_r` and `V = V_l V_r` through a width P >= K (over-parameterization:
the same functions, a wider product to train; nn.hyper).

Generation runs once per condition, not per row: rows with the same condition ids form one group
(nn.meta.ConditionGroups), each group's `z` goes through the generators once, and each row then gathers its
group's `K x K` cores. With the default condition (the scenario indicators) that is once per scenario in the
batch. `self_wise: true` adds each layer's own input to its condition (APG's self-wise condition), so its
cores are generated per row.

Choices (the paper leaves them open or offers several):
- The condition is the scenario-indicator embeddings plus the sparse fields in `condition_fields` (the
  paper's group-wise and mix-wise conditions), read from the shared embedding table.
- One generator MLP per layer (`generator`), its output bias starting at the identity core, so that the
  network starts as the shared low-rank MLP `U V` and learns each condition's departure.
- The biases are shared (not generated), as the paper's formulation of the generated weight; the output
  layer is a plain linear layer.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.registry import ModelOptions, part, register
from msrec.nn import FeatureEmbedding, MLPOptions
from msrec.nn.hyper import CoreGenerator, LowRankCoreLinear
from msrec.nn.meta import condition
from msrec.nn.mlp import ACTIVATIONS, BatchNorm, Dropout
from msrec.schema import FeatureSpec


class APGOptions(ModelOptions):
    mlp: MLPOptions = part([256, 128], dropout=0.2)
    """The MLP whose hidden layers are generated (`U S(z) V`), then a plain output layer."""
    rank: int = Field(16, ge=1)
    """Rank K of every generated layer (its core S(z) is K x K)."""
    overparam: int | None = Field(32, ge=1)
    """Over-parameterization width P >= rank of the shared factors (None: plain U, V)."""
    condition_fields: list[str] = Field(default_factory=list)
    """Sparse fields added to the condition besides the scenario indicators (e.g. user_id: one per user)."""
    self_wise: bool = False
    """Also condition each layer on its own input (its cores then generated per row)."""
    generator: MLPOptions = part([32], dropout=0.0)
    """Each layer's generator from the condition to its core S(z)."""

    @model_validator(mode="after")
    def _overparam_not_below_rank(self) -> APGOptions:
        if self.overparam is not None and self.overparam < self.rank:
            raise ValueError(f"`overparam` ({self.overparam}) must be at least `rank` ({self.rank})")
        return self


@register("apg", APGOptions,
          "MLP layers generated per condition in low rank, U S(z) V with a generated K x K core (APG)")
class APG(nn.Module):
    def __init__(self, spec: FeatureSpec, options: APGOptions):
        super().__init__()
        o = options
        self.self_wise = o.self_wise
        self.embedding = FeatureEmbedding(spec, o.embed_dim, o.backbone)
        self.condition_fields = list(dict.fromkeys([*spec.scenario_fields,
                                                    *(spec.sparse_index(f) for f in o.condition_fields)]))
        cond_dim = len(self.condition_fields) * o.embed_dim
        dims = [self.embedding.flat_dim, *o.mlp.hidden]
        self.layers = nn.ModuleList(LowRankCoreLinear(a, b, o.rank, o.overparam) for a, b in pairwise(dims))
        self.generators = nn.ModuleList(CoreGenerator(cond_dim + (a if o.self_wise else 0), o.rank, o.generator)
                                        for a in dims[:-1])
        self.norms = nn.ModuleList(BatchNorm(b) if o.mlp.batch_norm else nn.Identity() for b in dims[1:])
        self.act = ACTIVATIONS[o.mlp.activation]()
        self.dropout = Dropout(o.mlp.dropout)
        self.out = nn.Linear(dims[-1], spec.num_tasks)

    def _core(self, k: int, z: Tensor, groups, h: Tensor) -> Tensor:
        """Layer k's core for every row `[B, K, K]`: generated once per group (or per row, self-wise)."""
        if self.self_wise:
            return self.generators[k](torch.cat([groups.expand(z), h], 1))[:, 0]
        return groups.expand(self.generators[k](z)[:, 0])

    def generated_weights(self, batch: Batch) -> list[Tensor]:
        """Each row's generated weight `U S(z) V` `[B, in, out]` per layer (formed here for inspection only)."""
        groups, z = condition(self.embedding, batch, self.condition_fields)
        weights, h = [], self.embedding.flat(batch)
        for k, layer in enumerate(self.layers):
            core = self._core(k, z, groups, h)
            weights.append(layer.weight(core))
            h = self.act(self.norms[k](layer(h, core)))
        return weights

    def forward(self, batch: Batch) -> Tensor:
        groups, z = condition(self.embedding, batch, self.condition_fields)
        h = self.embedding.flat(batch)
        for k, layer in enumerate(self.layers):
            h = self.dropout(self.act(self.norms[k](layer(h, self._core(k, z, groups, h)))))
        return self.out(h)
