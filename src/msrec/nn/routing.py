"""Per-scenario parameters applied to each row's own scenario with whole-batch ops: no loop over scenarios.

A per-scenario layer keeps its weights stacked, `W [S, out, in]`, `b [S, out]`. `ScenarioRouting` lays a
batch's rows out as *tiles*: the rows sorted by scenario (stably), each scenario's rows cut into tiles of
`C` rows (its last tile padded with zero rows), so every tile belongs to one scenario and a scenario's tiles
are consecutive. A layer (`linear`, `linear_of`) is then one grouped matmul over the tiles' rows
(`F.grouped_mm`: each present scenario's rows times its weights, taken once), or, where that kernel does not
apply, one batched matmul of per-tile weights (`tile_linear`). Its cost is that of the padded rows plus one
weight slice per scenario present: it depends on the batch's rows (and on how many scenarios they touch),
not on S.

    pack:    rows [B, ...]  ->  tiles [N, C, ...]        (index_copy; padding rows are zeros)
    layer:   rows of scenario s @ W[s]^T + b[s], for the scenarios present (one grouped matmul)
    unpack:  tiles [N, C, ...] -> rows [B, ...]          (index_select; padding is dropped, gets no gradient)

The tile size is chosen per batch from the rows per scenario (`tile_size`): the size that minimises padded
rows + `TILE_COST` x tiles (a tile's own overhead: per-tile biases, and the weight copy where the batched
matmul is used; docs/scenarios.md has the measurements). A few large scenarios get large tiles, a long tail
small ones, a batch of scenarios of one row each `C = 1`.
One scenario in the batch: a single tile of the whole batch, no copy.

A scenario's parameters see, and get gradient from, its own rows only (padding rows are dropped before the
loss). A part declares its stacked parameters with `stacked` (explicitly: a width that happens to equal S is
not a scenario axis); when the trainer's optimizer updates them row-sparsely (`train.scenario_updates`,
msrec.train.optim) `gather` gives them a row-sparse gradient, the slices of the scenarios present only, so a
step's backward and update cost follows the scenarios in the batch, not S. Export (TorchScript / ONNX
tracing): the tiling depends on the data and would be baked into the graph, so there every row is its own
tile (`C = 1`, batched matmul): the same results, for any batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msrec.nn.mlp import dropout

TILE_COST = 4  # what a tile costs beyond its rows, in rows (docs/scenarios.md, "Applying them: tiles")


def stacked(param: nn.Parameter) -> nn.Parameter:
    """Declares `param` stacked by scenario: `[S, ...]`, slice s that of scenario s (or of routing group s).
    The trainer's row-sparse optimizer (msrec.train.optim) takes the parameters so declared; nothing else is
    one (never guessed from a shape). Returns `param`."""
    param.scenario_stacked = True
    return param


class RowSparseGather(torch.autograd.Function):
    """`weight.index_select(0, index)` whose gradient is row-sparse: a coalesced sparse COO tensor holding the
    summed gradient of the rows `index` names (its unique values), nothing for the other rows."""

    @staticmethod
    def forward(ctx, weight: Tensor, index: Tensor, ascending: bool = False) -> Tensor:
        ctx.save_for_backward(index)
        ctx.shape, ctx.ascending = weight.shape, ascending
        if ascending and len(index) == weight.shape[0]:  # every row, in order: a view, no copy
            return weight.view_as(weight)
        return weight.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        if ctx.ascending:  # distinct ascending rows: the gradient is already one slice per row, in order
            rows, values = index, grad.contiguous()
        else:
            rows, inverse = torch.unique(index, return_inverse=True)
            values = grad.new_zeros(len(rows), *grad.shape[1:]).index_add_(0, inverse, grad.contiguous())
        return torch.sparse_coo_tensor(rows.unsqueeze(0), values, ctx.shape, is_coalesced=True,
                                       check_invariants=False), None, None


def exporting() -> bool:
    """True while a model is being traced for TorchScript or ONNX export (data-dependent Python values,
    such as row counts, must not steer the computation then)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def tile_size(counts: Sequence[int], tile_cost: float = TILE_COST) -> int:
    """Rows per tile minimising `padded rows + tile_cost * tiles` for these rows per scenario (powers of two)."""
    n = np.asarray([c for c in counts if c], dtype=np.int64)
    if len(n) == 0:
        return 1
    best, best_cost, size = 1, float("inf"), 1
    while True:
        tiles = int(((n + size - 1) // size).sum())
        cost = tiles * (size + tile_cost)
        if cost < best_cost:
            best, best_cost = size, cost
        if size >= n.max():
            return best
        size *= 2


def tile_linear(tiles: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`tiles [N, C, ..., in] @ weight[n]^T + bias[n]` with weights already one per tile, `[N, out, in]`.

    Computed as `(weight @ tiles^T)^T`, so that the per-tile weights' gradient comes out contiguous in their own
    layout `[N, out, in]`: what follows it (summing the tiles' gradients per scenario, STAR's product with the
    shared weight) then reads memory in order. `tiles @ weight^T` gives it transposed, and those reductions ran
    3-4x slower on it (docs/scenarios.md, "Cost of a step")."""
    flat = tiles.reshape(tiles.shape[0], -1, tiles.shape[-1]).transpose(1, 2)  # [N, in, C']
    if bias is None:
        out = torch.bmm(weight, flat)
    else:
        out = torch.baddbmm(bias.unsqueeze(2), weight, flat)
    return out.transpose(1, 2).reshape(*tiles.shape[:-1], out.shape[1])


def tile_matmul(tiles: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`tiles [N, C, ..., in] @ weight[n] + bias[n]` with weights `[N, in, out]` (generated weights' layout,
    nn.meta): their gradient comes out contiguous in that layout."""
    flat = tiles.reshape(tiles.shape[0], -1, tiles.shape[-1])
    out = torch.bmm(flat, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), flat, weight)
    return out.view(*tiles.shape[:-1], out.shape[-1])


class ScenarioRouting:
    """The tiles of a batch by scenario. `counts`: rows per scenario when the caller knows them on the host
    (`Batch.scenario_counts`); otherwise they are counted here, one copy from the device. `tile`: force a
    tile size (benchmarks; None: `tile_size`)."""

    def __init__(self, scenario: Tensor, num_scenarios: int, counts: list[int] | None = None,
                 tile: int | None = None):
        self.scenario = scenario
        self.num_scenarios = num_scenarios
        self.rows = scenario.shape[0]
        self.traced = exporting()
        self._counts = None if counts is None else [*counts, *[0] * (num_scenarios - len(counts))]
        self._order: Tensor | None = None
        self.slot: Tensor | None = None  # each row's place among the tiles' rows (None: no copy, see below)
        self.ascending = False  # whether tile_scenario holds distinct scenarios in ascending order
        self._tile_present: Tensor | None = None  # each tile's place among the scenarios present (per_tile)
        self._present: ScenarioRouting | None = None
        self._group_ends: np.ndarray | None = None
        one_scenario = not self.traced and tile is None and sum(n > 0 for n in self.counts) == 1
        if one_scenario:  # the whole batch is one tile, nothing to move
            self.tile, self.num_tiles, self.tile_scenario = self.rows, 1, scenario[:1]
        elif self.traced or (tile or tile_size(self.counts)) == 1:  # every row its own tile
            self.tile, self.num_tiles, self.tile_scenario = 1, self.rows, scenario
        else:
            self.tile = tile or tile_size(self.counts)
            self._lay_out()

    @classmethod
    def of(cls, batch, num_scenarios: int) -> ScenarioRouting:
        """The routing of a `Batch` by its scenario column."""
        return cls(batch.scenario, num_scenarios, batch.scenario_counts)

    @property
    def counts(self) -> list[int]:
        if self._counts is None:
            self._counts = torch.bincount(self.scenario, minlength=self.num_scenarios).tolist()
        return self._counts

    @property
    def order(self) -> Tensor:
        """Row indices sorted by scenario (stable)."""
        if self._order is None:
            self._order = torch.argsort(self.scenario, stable=True)
        return self._order

    def _lay_out(self) -> None:
        device, size = self.scenario.device, self.tile
        counts = torch.tensor(self.counts, dtype=torch.long, device=device)
        per_scenario = (counts + size - 1) // size  # tiles of each scenario
        first_tile = per_scenario.cumsum(0) - per_scenario
        first_row = counts.cumsum(0) - counts  # where each scenario's rows start in sorted order
        sorted_scenario = self.scenario.index_select(0, self.order)
        rank = torch.arange(self.rows, device=device) - first_row[sorted_scenario]  # position within the scenario
        slot_sorted = (first_tile[sorted_scenario] + rank // size) * size + rank % size
        self.slot = torch.empty_like(slot_sorted).index_copy_(0, self.order, slot_sorted)
        self.num_tiles = int(np.sum((np.asarray(self.counts) + size - 1) // size))
        self.tile_scenario = torch.repeat_interleave(torch.arange(self.num_scenarios, device=device), per_scenario,
                                                     output_size=self.num_tiles)

    def pack(self, x: Tensor) -> Tensor:
        """`[B, ...]` -> `[N, C, ...]` tiles of one scenario each (zero rows pad a scenario's last tile)."""
        if self.slot is None:
            return x.unsqueeze(1) if self.num_tiles == self.rows else x.unsqueeze(0)
        tiles = x.new_zeros(self.num_tiles * self.tile, *x.shape[1:]).index_copy(0, self.slot, x)
        return tiles.view(self.num_tiles, self.tile, *x.shape[1:])

    def unpack(self, tiles: Tensor) -> Tensor:
        """Inverse of `pack`: `[N, C, ...]` -> `[B, ...]` in the batch's row order."""
        if self.slot is None:
            return tiles.squeeze(1) if self.num_tiles == self.rows else tiles.squeeze(0)
        return tiles.flatten(0, 1).index_select(0, self.slot)

    def valid(self) -> Tensor:
        """`[N, C]` 1.0 where a tile row is a real row, 0.0 where it pads."""
        if self.slot is None:
            return torch.ones(self.num_tiles, self.tile, device=self.scenario.device)
        flat = torch.zeros(self.num_tiles * self.tile, device=self.scenario.device)
        return flat.index_fill(0, self.slot, 1.0).view(self.num_tiles, self.tile)

    def gather(self, per_scenario: Tensor) -> Tensor:
        """`[S, ...]` -> `[N, ...]`: each tile's scenario's slice. A parameter switched to row-sparse gradients
        (`row_sparse_grad`, set by msrec.train.optim for `stacked` parameters) gets one: the present
        scenarios' slices only."""
        if (getattr(per_scenario, "row_sparse_grad", False) and per_scenario.requires_grad
                and torch.is_grad_enabled() and not self.traced):
            return RowSparseGather.apply(per_scenario, self.tile_scenario, self.ascending)
        if self.ascending and self.num_tiles == per_scenario.shape[0]:  # every slice, in order: no copy
            return per_scenario
        return per_scenario.index_select(0, self.tile_scenario)

    def present(self) -> ScenarioRouting:
        """A routing whose tiles are the scenarios present, one each, ascending (gathers through it take each
        present scenario's slice once)."""
        if self._present is None:
            view = copy.copy(self)
            present = np.flatnonzero(self.counts)
            view.tile_scenario = torch.from_numpy(present).to(self.scenario.device)
            view.num_tiles, view.ascending, view.slot = len(present), True, None
            view._present = view._tile_present = view._group_ends = None
            self._present = view
        return self._present

    def per_tile(self, compose: Callable[[ScenarioRouting], Tensor]) -> Tensor:
        """`[N, ...]`: a tensor per tile that `compose(routing)` builds from per-scenario parameters (through
        `routing.gather`), e.g. STAR's `W_s * W`. Where the scenarios present are fewer than the tiles, it is
        composed once per scenario present (`present()`) and then copied to their tiles: the composition, and
        its backward, cost one slice per scenario, not per tile."""
        if self.traced or self.present().num_tiles >= self.num_tiles:
            return compose(self)
        return self._present_to_tiles(compose(self.present()))

    def _in_scenario_order(self) -> bool:
        """Whether the tiles lie in scenario order, a scenario's tiles consecutive (laid out, or one tile)."""
        return not self.traced and (self.slot is not None or self.num_tiles == 1)

    def _present_to_tiles(self, per_present: Tensor) -> Tensor:
        """`[U, ...]` (one per scenario present) -> `[N, ...]` (one per tile), tiles laid out by scenario or not."""
        if self.ascending or (self._in_scenario_order() and self.present().num_tiles == self.num_tiles):
            return per_present  # one tile per scenario present, in order
        if self._tile_present is None:
            self._tile_present = torch.searchsorted(self.present().tile_scenario, self.tile_scenario)
        return per_present.index_select(0, self._tile_present)

    def linear_of(self, tiles: Tensor, weight_of: Callable[[ScenarioRouting], Tensor],
                  bias_of: Callable[[ScenarioRouting], Tensor] | None = None) -> Tensor:
        """`tiles [N, C, ..., in] @ W^T + b` per tile, with the weights `weight_of(routing) [K, out, in]` (and
        biases `bias_of(routing) [K, out]`) built for a routing's K tiles from per-scenario parameters, as in
        `per_tile`. Where the tiles lie in scenario order (laid out, or one scenario) and `in` and `out` are
        multiples of 4 float32s (the kernel's 16-byte alignment), one grouped matmul (`F.grouped_mm`) over the
        tiles' rows takes each present scenario's weights once: no per-tile copies of the weights nor per-tile
        weight gradients summed per scenario (those grew with the scenarios present; docs/scenarios.md, "Cost
        of a step"). Otherwise (export, every row its own tile in batch order, not on CPU) a batched matmul of per-tile
        weights."""
        cpu_float = tiles.device.type == "cpu" and tiles.dtype == torch.float32  # CUDA's kernel: bf16 on sm80+ only
        if not self._in_scenario_order() or not cpu_float or tiles.shape[-1] % 4:
            return tile_linear(tiles, self.per_tile(weight_of), None if bias_of is None else self.per_tile(bias_of))
        weight = weight_of(self.present())  # [U, out, in]
        bias = None if bias_of is None else self._present_to_tiles(bias_of(self.present()))
        if weight.shape[1] % 4:
            return tile_linear(tiles, self._present_to_tiles(weight), bias)
        if self._group_ends is None:  # each present scenario's last tile, counted in tiles
            counts = np.asarray(self.counts)
            self._group_ends = np.cumsum((counts[counts > 0] + self.tile - 1) // self.tile)
        rows_per_tile = tiles[0].numel() // tiles.shape[-1]
        ends = torch.from_numpy(self._group_ends * rows_per_tile).to(device=tiles.device, dtype=torch.int32)
        rows = tiles.reshape(-1, tiles.shape[-1]).contiguous()  # the kernel wants 16-byte aligned strides
        out = F.grouped_mm(rows, weight.contiguous().transpose(1, 2), offs=ends)
        out = out.view(*tiles.shape[:-1], out.shape[-1])
        return out if bias is None else out + bias.view(bias.shape[0], *[1] * (tiles.dim() - 2), bias.shape[-1])

    def dropout(self, tiles: Tensor, p: float, training: bool) -> Tensor:
        """Dropout on tiles `[N, C, ...]` (`msrec.nn.mlp.dropout`: its CPU mask from 16-bit random lanes). Padding
        rows get a mask too (they are dropped at `unpack`): drawing only the batch's rows and packing them cost
        more than the padding's draws (measured at a third of the rows padding)."""
        return dropout(tiles, p, training)

    def linear(self, tiles: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """`tiles [N, C, ..., in] @ weight[s]^T + bias[s]` per tile, with `weight [S, out, in]`, `bias [S, out]`."""
        return self.linear_of(tiles, lambda r: r.gather(weight), None if bias is None else lambda r: r.gather(bias))
