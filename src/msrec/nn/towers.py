"""Per-scenario MLPs with stacked weights (Split&Merge's and MMoE's towers, PLE's scenario experts, the
`separate` baseline's networks), applied to each row's own scenario over the batch's tiles (nn.routing).

Layer l of scenario s is `W_l[s] [out, in]`, `b_l[s]`; a part's options (`hidden`, `dropout`, `activation`,
`batch_norm`) reach every scenario's MLP: PReLU keeps one slope per scenario and layer, batch normalization
one running mean / variance per scenario (each from its own rows only, as one BatchNorm per tower did).
A step updates every scenario's weights (dense optimizer), those of scenarios absent from the batch by a
zero gradient (docs/scenarios.md).

Run directories written before the weights were stacked (one `MLP` per scenario, `towers.<s>.layers.<j>.*`)
load into the stacked tensors (`legacy`), and score the same.

A hierarchical scenario (`levels`, nn.levels): layer l of combination s = (c, p) is
`W_l = base_l + own_l[s] + D_l,country[c] + D_l,placement[p]` (biases alike): a shared base drawn as
`nn.Linear` draws one, plus additive deltas that start at zero, so every combination starts as the shared
tower and a combination with few rows is its levels' tower plus a small correction of its own (`own=False`:
none). The own deltas keep the flat names (`weight.l`, `bias.l`), the base and level deltas are `shared.*`.
Batch norms and PReLU slopes stay per combination (statistics are the combination's rows').
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import torch
from torch import Tensor, nn

from msrec.nn.grow import grow_rows
from msrec.nn.levels import LevelParts
from msrec.nn.mlp import ACTIVATIONS, MLP, Dropout, MLPOptions
from msrec.nn.routing import ScenarioRouting, stacked
from msrec.schema import ScenarioLevels

MOMENTUM, EPS = 0.1, 1e-5  # BatchNorm1d's defaults, as the per-tower norms had


def linear_init(num: int, out_dim: int, in_dim: int) -> tuple[nn.Parameter, nn.Parameter]:
    """`num` stacked layers drawn as `nn.Linear` draws one (uniform within 1 / sqrt(in_dim))."""
    bound = 1 / math.sqrt(in_dim)
    return (stacked(nn.Parameter(torch.empty(num, out_dim, in_dim).uniform_(-bound, bound))),
            stacked(nn.Parameter(torch.empty(num, out_dim).uniform_(-bound, bound))))


class SharedLinear(nn.Module):
    """A stacked linear layer's level-shared parts (see the module's docstring): a base drawn as `nn.Linear`
    draws one and additive level deltas, composed with the caller's own deltas `[S, ...]` (or None)."""

    def __init__(self, in_dim: int, out_dim: int, levels: ScenarioLevels):
        super().__init__()
        weight, bias = linear_init(1, out_dim, in_dim)
        self.weight = LevelParts(levels, (out_dim, in_dim), "add", base=weight[0])
        self.bias = LevelParts(levels, (out_dim,), "add", base=bias[0])

    def linear(self, tiles: Tensor, routing: ScenarioRouting, own_weight: Tensor | None,
               own_bias: Tensor | None) -> Tensor:
        """The layer on tiles, each tile's weights composed from its scenario's parts (`routing.linear_of`)."""
        return routing.linear_of(tiles, lambda r: self.weight.compose(r, own_weight),
                                 lambda r: self.bias.compose(r, own_bias))

    def every(self, own_weight: Tensor | None, own_bias: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.weight.every(own_weight), self.bias.every(own_bias)


def stacked_linear(num: int, out_dim: int, in_dim: int, levels: ScenarioLevels | None,
                   own: bool) -> tuple[nn.Parameter | None, nn.Parameter | None]:
    """A stacked layer's own slices: the whole layer of each scenario when flat (drawn as `nn.Linear`), the
    combinations' own deltas (zeros) with level sharing, none without a combination part."""
    if levels is None:
        return linear_init(num, out_dim, in_dim)
    if not own:
        return None, None
    return stacked(nn.Parameter(torch.zeros(num, out_dim, in_dim))), stacked(nn.Parameter(torch.zeros(num, out_dim)))


class ScenarioBatchNorm(nn.Module):
    """Batch normalization per scenario on tiles: each scenario's rows normalised by their own batch
    statistics in training (running statistics for a one-row slice, left unchanged), by its running
    statistics in evaluation. Whole-batch scatter ops; padding rows count for nothing."""

    def __init__(self, dim: int, num_scenarios: int):
        super().__init__()
        self.weight = stacked(nn.Parameter(torch.ones(num_scenarios, dim)))
        self.bias = stacked(nn.Parameter(torch.zeros(num_scenarios, dim)))
        self.register_buffer("running_mean", torch.zeros(num_scenarios, dim))
        self.register_buffer("running_var", torch.ones(num_scenarios, dim))

    def grow_scenarios(self, source: Tensor) -> None:
        grow_rows(self, source, "weight", "bias", "running_mean", "running_var")

    def forward(self, h: Tensor, routing: ScenarioRouting) -> Tensor:
        mean, var = self.running_mean, self.running_var
        if self.training:
            valid = routing.valid().unsqueeze(-1)  # [N, C, 1]
            counts = torch.tensor(routing.counts, dtype=h.dtype, device=h.device).unsqueeze(1)
            zeros = h.new_zeros(self.running_mean.shape)
            batch_mean = zeros.index_add(0, routing.tile_scenario, (h * valid).sum(1)) / counts.clamp(min=1)
            centred = (h - routing.gather(batch_mean).unsqueeze(1)) * valid
            batch_var = zeros.index_add(0, routing.tile_scenario, (centred * centred).sum(1)) / counts.clamp(min=1)
            use = counts >= 2  # one row has no variance: it is normalised with the running statistics
            mean, var = torch.where(use, batch_mean, mean), torch.where(use, batch_var, var)
            with torch.no_grad():
                rate = MOMENTUM * use.to(h.dtype)
                self.running_mean.lerp_(batch_mean.detach(), rate)
                self.running_var.lerp_(batch_var.detach() * counts / (counts - 1).clamp(min=1), rate)
        scale = routing.gather(self.weight * torch.rsqrt(var + EPS)).unsqueeze(1)
        return (h - routing.gather(mean).unsqueeze(1)) * scale + routing.gather(self.bias).unsqueeze(1)


class ScenarioMLP(nn.Module):
    """`MLP.of(in_dim, options, out_dim)` for each of `num_scenarios` scenarios, weights stacked.
    `forward(x [B, in], routing)` runs each row through its own scenario's MLP; `every(x)` runs every row
    through every scenario's MLP (`[B, S, out]`, HMoE's cross scores; no batch normalization there)."""

    def __init__(self, in_dim: int, options: MLPOptions, out_dim: int | None, num_scenarios: int,
                 legacy: Callable[[str, int], str] | None = None, levels: ScenarioLevels | None = None,
                 own: bool = True):
        super().__init__()
        self.options, self.num_scenarios, self.legacy = options, num_scenarios, legacy
        dims = [in_dim, *options.hidden, *([out_dim] if out_dim is not None else [])]
        self.weight, self.bias = nn.ParameterList(), nn.ParameterList()  # own slices (flat: the layers)
        for a, b in pairwise(dims):
            w, bias = stacked_linear(num_scenarios, b, a, levels, own)
            if w is not None:
                self.weight.append(w)
                self.bias.append(bias)
        self.shared = None if levels is None else nn.ModuleList(SharedLinear(a, b, levels) for a, b in pairwise(dims))
        self.num_layers = len(dims) - 1
        hidden = len(options.hidden)
        self.norms = nn.ModuleList(ScenarioBatchNorm(w, num_scenarios) for w in options.hidden) \
            if options.batch_norm else None
        self.prelu = nn.ParameterList(stacked(nn.Parameter(torch.full((num_scenarios, 1), 0.25))) for _ in range(hidden)) \
            if options.activation == "prelu" else None
        self.act = ACTIVATIONS[options.activation]() if options.activation != "prelu" else None
        self.dropout = Dropout(options.dropout) if options.dropout > 0 else nn.Identity()
        self.num_hidden = hidden
        self.out_dim = dims[-1]

    def grow_scenarios(self, source: Tensor) -> None:
        """New scenarios' MLPs copied from their source scenarios' (the norms grow themselves; msrec.nn.grow)."""
        layers = range(len(self.weight))  # level deltas do not grow with scenarios (nn.levels)
        grow_rows(self, source, *(f"weight.{l}" for l in layers), *(f"bias.{l}" for l in layers),
                  *(f"prelu.{l}" for l in range(len(self.prelu or []))))
        self.num_scenarios += len(source)

    def activate(self, h: Tensor, l: int, slope: Callable[[Tensor], Tensor]) -> Tensor:
        if self.prelu is None:
            return self.act(h)
        return torch.where(h >= 0, h, slope(self.prelu[l]) * h)

    def own(self, l: int) -> tuple[Tensor | None, Tensor | None]:
        return (self.weight[l], self.bias[l]) if len(self.weight) else (None, None)

    def layer(self, l: int) -> tuple[Tensor, Tensor]:
        """Layer l of every scenario, `[S, out, in]` and `[S, out]` (composed by level where shared)."""
        return self.own(l) if self.shared is None else self.shared[l].every(*self.own(l))

    def tiles(self, h: Tensor, routing: ScenarioRouting) -> Tensor:
        """The MLPs on tiles `[N, C, in]` (`routing.pack(x)`), giving tiles `[N, C, out]`."""
        for l in range(self.num_layers):
            if self.shared is None:
                h = routing.linear(h, self.weight[l], self.bias[l])
            else:  # each tile's layer composed from its combination's parts
                h = self.shared[l].linear(h, routing, *self.own(l))
            if l < self.num_hidden:
                if self.norms is not None:
                    h = self.norms[l](h, routing)
                h = routing.dropout(self.activate(h, l, lambda p: routing.gather(p).unsqueeze(1)),
                                    self.options.dropout, self.training)
        return h

    def forward(self, x: Tensor, routing: ScenarioRouting) -> Tensor:
        return routing.unpack(self.tiles(routing.pack(x), routing))

    def every(self, x: Tensor) -> Tensor:
        """Every scenario's MLP on every row: `[B, in]` -> `[B, S, out]`."""
        h = x.unsqueeze(1).expand(-1, self.num_scenarios, -1)
        for l in range(self.num_layers):
            weight, bias = self.layer(l)
            h = torch.einsum("bsi,soi->bso", h, weight) + bias
            if l < self.num_hidden:
                h = self.dropout(self.activate(h, l, lambda p: p.view(1, -1, 1)))
        return h

    def scenario(self, s: int) -> MLP:
        """Scenario s's network as an ordinary `MLP` (a copy, in evaluation mode; for inspection and tests)."""
        in_dim = self.layer(0)[0].shape[2]
        out_dim = self.out_dim if self.num_layers > self.num_hidden else None
        mlp = MLP.of(in_dim, self.options, out_dim).eval()
        mlp.load_state_dict(self._legacy_tensors(lambda t: t[s]), strict=True)
        return mlp

    def _legacy_tensors(self, pick: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        """One scenario's tensors under `MLP`'s names (`layers.<j>.weight`, ...), `pick` choosing it."""
        out: dict[str, Tensor] = {}
        layers = [self.layer(l) for l in range(self.num_layers)]
        for name, tensor in self._legacy_names().items():
            if tensor is None:  # BatchNorm's `num_batches_tracked` (unused: the momentum is set)
                out[name] = torch.tensor(0)
            elif tensor.startswith(("weight.", "bias.")):
                kind, l = tensor.split(".")
                out[name] = pick(layers[int(l)][kind == "bias"])
            else:
                out[name] = pick(self.get_buffer(tensor) if "running" in tensor else self.get_parameter(tensor))
        return out

    def _legacy_names(self) -> dict[str, str | None]:
        """`MLP` state-dict names of one scenario's network -> this module's stacked tensor names."""
        names: dict[str, str | None] = {}
        j = 0
        for l in range(self.num_layers):
            names[f"layers.{j}.weight"], names[f"layers.{j}.bias"] = f"weight.{l}", f"bias.{l}"
            j += 1
            if l >= self.num_hidden:
                break
            if self.norms is not None:
                for key in ("weight", "bias", "running_mean", "running_var"):
                    names[f"layers.{j}.{key}"] = f"norms.{l}.{key}"
                names[f"layers.{j}.num_batches_tracked"] = None
                j += 1
            if self.prelu is not None:
                names[f"layers.{j}.weight"] = f"prelu.{l}"
            j += 1 + (self.options.dropout > 0)
        return names

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Stacks the weights of a run written with one `MLP` per scenario (their names given by `legacy`)."""
        if self.legacy is not None and self.shared is None and f"{self.legacy(prefix, 0)}layers.0.weight" in state_dict:
            for name, stacked in self._legacy_names().items():
                parts = [state_dict.pop(f"{self.legacy(prefix, s)}{name}") for s in range(self.num_scenarios)]
                if stacked is not None:
                    state_dict[prefix + stacked] = torch.stack(parts)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ScenarioTowers(ScenarioMLP):
    """One tower per scenario ending in a linear layer of width `out_dim` (split_merge, mmoe, ple, hmoe).
    Runs written with one `MLP` per scenario (`towers.<s>.layers.<j>.*`) load into the stacked weights."""

    def __init__(self, in_dim: int, options: MLPOptions, out_dim: int, num_scenarios: int,
                 levels: ScenarioLevels | None = None, own: bool = True):
        super().__init__(in_dim, options, out_dim, num_scenarios, legacy=lambda prefix, s: f"{prefix}towers.{s}.",
                         levels=levels, own=own)


class ScenarioLinear(nn.Module):
    """One linear layer per scenario, stacked: `weight [S, out, in]`, `bias [S, out]` (a scenario's gate).
    Runs written with one `nn.Linear` per scenario load into the stack (`legacy(prefix, s)`: the old
    layer's prefix)."""

    def __init__(self, in_dim: int, out_dim: int, num_scenarios: int,
                 legacy: Callable[[str, int], str] | None = None, levels: ScenarioLevels | None = None,
                 own: bool = True):
        super().__init__()
        self.weight, self.bias = stacked_linear(num_scenarios, out_dim, in_dim, levels, own)  # own slices
        self.shared = None if levels is None else SharedLinear(in_dim, out_dim, levels)
        self.num_scenarios, self.legacy = num_scenarios, legacy

    def grow_scenarios(self, source: Tensor) -> None:
        if self.weight is not None:
            grow_rows(self, source, "weight", "bias")
        self.num_scenarios += len(source)

    def forward(self, x: Tensor, routing: ScenarioRouting) -> Tensor:
        if self.shared is None:
            return routing.unpack(routing.linear(routing.pack(x), self.weight, self.bias))
        return routing.unpack(self.shared.linear(routing.pack(x), routing, self.weight, self.bias))

    def scenario(self, s: int) -> nn.Linear:
        """Scenario s's layer as an ordinary `nn.Linear` (a copy; for inspection and tests)."""
        weight, bias = (self.weight, self.bias) if self.shared is None else self.shared.every(self.weight, self.bias)
        layer = nn.Linear(weight.shape[2], weight.shape[1])
        layer.load_state_dict({"weight": weight[s], "bias": bias[s]})
        return layer

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.legacy is not None and self.shared is None and f"{self.legacy(prefix, 0)}weight" in state_dict:
            for name in ("weight", "bias"):
                state_dict[prefix + name] = torch.stack(
                    [state_dict.pop(f"{self.legacy(prefix, s)}{name}") for s in range(self.num_scenarios)])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
