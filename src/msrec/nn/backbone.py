"""Interaction backbones: what turns the embedded fields into the model input `e` that every model's shared
bottom reads (`model.backbone`, see docs/backbones.md).

    mlp     e = [v_1; ...; v_F; dense]                         the concatenation (the model's MLP does the rest)
    dcn_v2  e = x_L,  x_{l+1} = x_0 * (W_l x_l + b_l) + x_l,  x_0 = [v_1; ...; v_F; dense]
    fm      e = [v_1; ...; v_F; dense; p],  p = sum_{i<j} v_i * v_j = 0.5 * ((sum_f v_f)^2 - sum_f v_f^2)

`dcn_v2` is DCN-v2's cross network (Wang et al., WWW 2021) in its stacked form: L cross layers, then the
model's own network over their output, which has the input's width; `rank` > 0 factors each W_l = U_l V_l^T
(the paper's low-rank cross layer). `fm` appends the FM pairwise interactions pooled into one D-wide vector
(NFM's bi-interaction pooling, He & Chua 2017): the FM's second-order logit is the sum of `p`, so the first
linear layer of the model's network can read the FM logit and more from it. With `per_scenario`, the pairs
of scenario s are bilinear: p = sum_{i<j} (v_i W_s) * v_j, W_s = W + W'_s (a D x D map shared by every
scenario plus each scenario's own, stacked [S, D, D] and gathered by the row's scenario), starting at the
identity (the plain FM); the synthetic truth's scenario-specific preference u^T M_s i has this form.

Both read the embedded fields only through whole-batch tensor ops (no loop over rows or scenarios), so an
export traces them as they are.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from msrec.nn.grow import grow_rows

ONLY = {"layers": "dcn_v2", "rank": "dcn_v2", "per_scenario": "fm"}


class BackboneOptions(BaseModel):
    """The interaction backbone under a model's network; `backbone: dcn_v2` is short for `{name: dcn_v2}`."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    name: Literal["mlp", "fm", "dcn_v2"] = "mlp"
    """mlp: the embeddings and dense values concatenated; fm: that and the FM pair-interaction vector
    (embed_dim wide); dcn_v2: cross layers over the concatenation (same width)."""
    layers: int = Field(3, ge=1)
    """dcn_v2: number of cross layers."""
    rank: int = Field(0, ge=0)
    """dcn_v2: rank of each cross layer's W (0: full rank)."""
    per_scenario: bool = False
    """fm: each scenario's own bilinear map in the pair interactions (shared map + the scenario's)."""

    @model_validator(mode="before")
    @classmethod
    def _short(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _applies(self) -> BackboneOptions:
        for key in sorted(self.model_fields_set & set(ONLY)):  # a default is no choice (a dumped config has them)
            if ONLY[key] != self.name and getattr(self, key) != type(self).model_fields[key].default:
                raise ValueError(f"`{key}` applies to backbone {ONLY[key]}, not {self.name}")
        return self


class CrossLayer(nn.Module):
    """x_0 * (W x + b) + x: one explicit degree of feature interaction more, kept beside x (residual)."""

    def __init__(self, width: int, rank: int):
        super().__init__()
        if rank:
            self.down = nn.Linear(width, rank, bias=False)
            self.up = nn.Linear(rank, width)
            weights = [self.down.weight, self.up.weight]
        else:
            self.down, self.up = nn.Identity(), nn.Linear(width, width)
            weights = [self.up.weight]
        for w in weights:  # as the reference implementations (torchrec's CrossNet): Xavier normal, zero bias
            nn.init.xavier_normal_(w)
        nn.init.zeros_(self.up.bias)

    def forward(self, x0: Tensor, x: Tensor) -> Tensor:
        return x0 * self.up(self.down(x)) + x


class CrossNetwork(nn.Module):
    """`dcn_v2`: L cross layers over the concatenation; the output keeps the input's width."""

    def __init__(self, num_fields: int, dim: int, dense_dim: int, layers: int, rank: int):
        super().__init__()
        self.out_dim = num_fields * dim + dense_dim
        self.cross = nn.ModuleList(CrossLayer(self.out_dim, rank) for _ in range(layers))

    def forward(self, fields: Tensor, dense: Tensor, scenario: Tensor) -> Tensor:
        x0 = x = torch.cat([fields.flatten(1), dense], 1)
        for layer in self.cross:
            x = layer(x0, x)
        return x


class PairInteraction(nn.Module):
    """`p [B, D]`: the sum over field pairs i < j of v_i * v_j (FM), or of (v_i W_s) * v_j per scenario."""

    def __init__(self, dim: int, num_scenarios: int, per_scenario: bool):
        super().__init__()
        self.per_scenario = per_scenario
        if per_scenario:
            self.shared = nn.Parameter(torch.eye(dim))
            self.specific = nn.Parameter(torch.zeros(num_scenarios, dim, dim))

    def grow_scenarios(self, source: Tensor) -> None:
        if self.per_scenario:
            grow_rows(self, source, "specific")

    def forward(self, fields: Tensor, scenario: Tensor) -> Tensor:
        if not self.per_scenario:
            total = fields.sum(1)
            return 0.5 * (total * total - (fields * fields).sum(1))
        maps = self.shared + self.specific.index_select(0, scenario)  # [B, D, D]
        left = torch.bmm(fields, maps)  # v_i W_s, [B, F, D]
        before = left.cumsum(1) - left  # sum over i < j of v_i W_s, at field j
        return (before * fields).sum(1)


class FMBackbone(nn.Module):
    """`fm`: the concatenation, then the pooled pair interactions."""

    def __init__(self, num_fields: int, dim: int, dense_dim: int, num_scenarios: int, per_scenario: bool):
        super().__init__()
        self.out_dim = num_fields * dim + dense_dim + dim
        self.pairs = PairInteraction(dim, num_scenarios, per_scenario)

    def forward(self, fields: Tensor, dense: Tensor, scenario: Tensor) -> Tensor:
        return torch.cat([fields.flatten(1), dense, self.pairs(fields, scenario)], 1)


def build_backbone(options: BackboneOptions | None, num_fields: int, dim: int, dense_dim: int,
                   num_scenarios: int) -> nn.Module | None:
    """The backbone module, `(fields [B, F, D], dense [B, Dd], scenario [B]) -> e [B, out_dim]`; None for
    `mlp`, whose input is the plain concatenation (no module: a model's parameters and init stay as before)."""
    o = options or BackboneOptions()
    if o.name == "dcn_v2":
        return CrossNetwork(num_fields, dim, dense_dim, o.layers, o.rank)
    if o.name == "fm":
        return FMBackbone(num_fields, dim, dense_dim, num_scenarios, o.per_scenario)
    return None
