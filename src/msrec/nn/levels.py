"""Per-scenario parameters shared by level, for a scenario of several columns (`data.scenario: [country,
placement]`, docs/scenarios.md "Hierarchical scenarios: parameters shared by level").

A flat model holds one independent slice per scenario of each stacked tensor `[S, ...]`, so a combination
with a few hundred rows trains its slice from those rows alone. Here combination s = (c, p) composes its
slice from one part per level value, which every combination holding that value trains, and optionally a
part of its own:

    multiplicative (STAR's W_s):  T_s = own[s] * P_country[c] * P_placement[p]          parts start at ones
    additive (biases, towers):    T_s = base + own[s] + P_country[c] + P_placement[p]   parts start at zeros

Each level's parts are one table `[sizes[l], ...]` indexed by the level ids of `ScenarioLevels.tensor()`;
level id 0 (the combination fell back from that level, `US/*`) is the identity (ones / zeros), whatever
row 0 holds (it gets no gradient). The own part stays with the caller under its flat name (`weight_s`,
`weight.0`), so that a flat model keeps its parameter names.

Applied to tiles (nn.routing), the scenarios present in the batch gather their level ids, then each level's
part through `ScenarioRouting.gather` (as every per-scenario tensor is gathered, row-sparse gradients
included), compose them, and each tile takes its scenario's; where there are fewer tiles than scenarios
present (every row its own tile), each tile composes its own. The cost follows the batch, never S
(measured against flat parameters: docs/scenarios.md, `python benchmarks/hierarchy.py --step`).
"""

from __future__ import annotations

import copy
import functools
import operator
from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from msrec.nn.routing import ScenarioRouting, stacked
from msrec.schema import FeatureSpec, ScenarioLevels


class LevelSharingOptions(BaseModel):
    """The options of a model whose per-scenario parameters can be shared by level (mixed into its options)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    level_sharing: bool = True
    """A scenario of several columns: each combination's per-scenario parameters are composed from one part per
    level value (and its own, `combination_part`), so that combinations holding a value share its part
    (docs/scenarios.md). false: independent parameters per combination. No effect on a single scenario column."""
    combination_part: bool = True
    """With level sharing, each combination also keeps a part of its own (false: only its levels' parts)."""


def shared_levels(spec: FeatureSpec, options: LevelSharingOptions) -> ScenarioLevels | None:
    """The levels a model shares its per-scenario parameters by: the scenario's, when it has several columns and
    `level_sharing` is on; None (flat, independent parameters per scenario) otherwise."""
    return spec.levels if options.level_sharing and spec.levels is not None else None


def per_group(levels: ScenarioLevels, groups: int) -> ScenarioLevels:
    """The levels of `groups` stacked slices per scenario (PLE's Ep experts of each scenario: slice s * groups + j):
    slice j of a level value is its own part (value v's j-th part is row (v - 1) * groups + j + 1; 0 stays 0)."""
    if groups == 1:
        return levels
    ids = [[0 if v == 0 else (v - 1) * groups + j + 1 for v in combination]
           for combination in levels.ids for j in range(groups)]
    values = [[f"{value}#{j}" for value in level for j in range(groups)] for level in levels.values]
    return ScenarioLevels(levels.columns, values, ids)


def _gather_rows(routing: ScenarioRouting, table: Tensor, index: Tensor) -> Tensor:
    """`table[index]` (one index per tile) through `routing.gather`, so that a level table is gathered, and gets
    its gradient, exactly as a per-scenario tensor does."""
    view = copy.copy(routing)
    view.tile_scenario, view.num_scenarios, view.ascending = index, table.shape[0], False
    return view.gather(table)


class LevelParts(nn.Module):
    """One part per level value of a stacked per-scenario tensor `[S, *shape]`, composed by `op` (`"mul"`:
    product, parts start at ones; `"add"`: sum, parts start at zeros) with an optional shared `base` (added,
    `"add"` only) and the caller's own slices `own [S, *shape]` (or None)."""

    def __init__(self, levels: ScenarioLevels, shape: Sequence[int], op: str, base: Tensor | None = None):
        super().__init__()
        if op not in ("mul", "add") or (base is not None and op != "add"):
            raise ValueError(f"level parts: op {op!r} (mul, or add with an optional base)")
        self.op, self.identity = op, 1.0 if op == "mul" else 0.0
        # stacked by level value, gathered per tile: row-sparse gradients where the optimizer asks (nn.routing)
        self.parts = nn.ParameterList(stacked(nn.Parameter(torch.full((size, *shape), self.identity)))
                                      for size in levels.sizes)
        self.base = None if base is None else nn.Parameter(base.detach().clone())
        # Each scenario's level ids [S, L]: from the feature spec, not saved (a run's encoder holds them).
        self.register_buffer("ids", levels.tensor(), persistent=False)
        self.fallback = (self.ids == 0).any(0).tolist()  # levels some combination fell back from (never the first)

    @torch.no_grad()
    def grow_levels(self, sizes: list[int]) -> None:
        """Level l's table grown to `sizes[l]` rows (a grown encoder's `scenario_levels.sizes`: new level values
        append ids), the new values' parts the identity: before it trains, a new value changes no combination.
        msrec extend calls it with the sizes of the model built for the grown encoder and trains the new rows."""
        for l, size in enumerate(sizes):
            old = self.parts[l]
            extra = torch.full((size - old.shape[0], *old.shape[1:]), self.identity, dtype=old.dtype, device=old.device)
            grown = stacked(nn.Parameter(torch.cat([old, extra]), requires_grad=old.requires_grad))
            self.parts[l] = grown

    def _compose(self, ids: Tensor, picked: list[Tensor], own: Tensor | None) -> Tensor:
        """`picked[l] [K, *shape]` (level l's parts of K scenarios or tiles, their ids `ids [K, L]`), the
        identity where a level id is 0, composed with `own` and the base."""
        parts = [torch.where((ids[:, l] > 0).view(-1, *[1] * (p.dim() - 1)), p, self.identity)
                 if self.fallback[l] else p for l, p in enumerate(picked)]
        if own is not None:
            parts.append(own)
        combine = operator.mul if self.op == "mul" else operator.add
        out = functools.reduce(combine, parts)
        return out if self.base is None else out + self.base

    def compose(self, routing: ScenarioRouting, own: Tensor | None = None) -> Tensor:
        """`[K, *shape]`: the tensor of each of a routing's K tiles (`own`: the stacked own slices `[S, *shape]`),
        composed tile by tile; `ScenarioRouting.per_tile` / `linear_of` call it once per scenario present."""
        ids = routing.gather(self.ids)  # [N, L]
        picked = [_gather_rows(routing, part, ids[:, l]) for l, part in enumerate(self.parts)]
        return self._compose(ids, picked, None if own is None else routing.gather(own))

    def every(self, own: Tensor | None = None) -> Tensor:
        """`[S, *shape]`: every scenario's tensor (HMoE's cross scores, inspection)."""
        picked = [part.index_select(0, self.ids[:, l]) for l, part in enumerate(self.parts)]
        return self._compose(self.ids, picked, own)
