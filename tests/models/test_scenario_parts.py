"""Stacked per-scenario parameters (nn.routing, nn.towers): every tiling gives each row its own scenario's
layer; per-scenario MLPs equal one MLP per scenario (batch norm and PReLU included), and the weights of a
run written with one MLP per scenario load into the stacks and score the same."""

from __future__ import annotations

import pytest
import torch

from msrec.nn.mlp import MLP, MLPOptions
from msrec.nn.routing import ScenarioRouting, tile_linear, tile_size
from msrec.nn.towers import ScenarioTowers


@pytest.mark.parametrize("tile", [None, 1, 2, 3, 8, 64])
@pytest.mark.parametrize("scenarios", [[1, 0, 1, 1], [2] * 5, [0, 3, 3, 1, 0, 3, 2, 2, 2, 3, 0, 1, 3]])
def test_every_tiling_gives_each_row_its_own_scenarios_layer(tile, scenarios):
    torch.manual_seed(0)
    scenario = torch.tensor(scenarios)
    weight, bias, x = torch.randn(4, 5, 3), torch.randn(4, 5), torch.randn(len(scenarios), 3, requires_grad=True)
    routing = ScenarioRouting(scenario, 4, tile=tile)
    out = routing.unpack(routing.linear(routing.pack(x), weight, bias))
    expected = torch.einsum("bi,boi->bo", x, weight[scenario]) + bias[scenario]
    torch.testing.assert_close(out, expected)
    out.sum().backward()  # padding rows give the rows no gradient of their own
    torch.testing.assert_close(x.grad, weight[scenario].sum(1))


def test_tile_size_is_whole_segments_for_few_large_scenarios_and_rows_for_singletons():
    assert tile_size([2400, 1200, 400]) >= 64
    assert tile_size([1] * 4000) == 1


def towers_and_their_mlps(options: MLPOptions, S: int = 4):
    torch.manual_seed(0)
    old = torch.nn.ModuleList(MLP.of(6, options, 2) for _ in range(S))
    for mlp in old:
        for p in mlp.parameters():
            torch.nn.init.normal_(p)
        for name, b in mlp.named_buffers():
            if b.is_floating_point():
                b.uniform_(0.5, 2.0)

    class Model(torch.nn.Module):  # a model of before: `towers.towers.<s>.layers.<j>.*`
        def __init__(self):
            super().__init__()
            self.towers = ScenarioTowers(6, options, 2, S)

    model = Model()
    state = {f"towers.towers.{s}.{k}": v for s, mlp in enumerate(old) for k, v in mlp.state_dict().items()}
    assert not model.load_state_dict(state, strict=False).unexpected_keys
    return model.towers, old


@pytest.mark.parametrize("options", [MLPOptions(hidden=[8], dropout=0.0),
                                     MLPOptions(hidden=[8, 4], dropout=0.0, activation="prelu", batch_norm=True)],
                         ids=["relu", "prelu-batch-norm"])
def test_stacked_towers_load_one_mlp_per_scenario_and_score_the_same(options):
    towers, old = towers_and_their_mlps(options)
    scenario = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 0, 2])
    x = torch.randn(len(scenario), 6)
    for train in (False, True):  # evaluation: running statistics; training: each scenario's batch statistics
        towers.train(train)
        old.train(train)
        out = towers(x, ScenarioRouting(scenario, 4))
        expected = torch.zeros_like(out)
        for s in range(4):
            rows = (scenario == s).nonzero().squeeze(1)
            expected[rows] = old[s](x[rows])
        torch.testing.assert_close(out, expected)
    if options.batch_norm:  # the running statistics moved as each tower's own BatchNorm moved them
        for k, layer in ((0, 1), (1, 4)):
            torch.testing.assert_close(towers.norms[k].running_mean,
                                       torch.stack([m.layers[layer].running_mean for m in old]))
            torch.testing.assert_close(towers.norms[k].running_var,
                                       torch.stack([m.layers[layer].running_var for m in old]))


@pytest.mark.parametrize("tile", [None, 1, 4])
def test_weights_composed_once_per_scenario_present_equal_those_composed_per_tile(tile):
    """`per_tile` builds STAR-like weights `W_s * W` once per scenario present and copies them to the tiles:
    the same tiles, and the same gradients for `W_s` (only the present scenarios' slices) and `W`."""
    scenario = torch.tensor([0, 3, 3, 1, 0, 3, 3, 3, 3, 3, 0, 1, 3])
    grads = []
    for composed in ("per tile", "per scenario present"):
        torch.manual_seed(0)
        w_s, w = torch.randn(5, 4, 3).requires_grad_(), torch.randn(4, 3).requires_grad_()
        x = torch.randn(len(scenario), 3)
        routing = ScenarioRouting(scenario, 5, tile=tile)
        def compose(r, w_s=w_s, w=w):
            return r.gather(w_s) * w

        weight = compose(routing) if composed == "per tile" else routing.per_tile(compose)
        assert weight.shape[0] == routing.num_tiles
        out = routing.unpack(tile_linear(routing.pack(x), weight))
        torch.testing.assert_close(out, torch.einsum("bi,boi->bo", x, (w_s * w)[scenario]))
        out.pow(2).sum().backward()
        grads.append((w_s.grad, w.grad))
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[1][0][[2, 4]].abs().sum() == 0  # absent scenarios: no gradient


@pytest.mark.parametrize("tile", [None, 1, 8])
def test_tile_dropout_keeps_each_unit_with_probability_1_minus_p_scaled(tile):
    torch.manual_seed(0)
    scenario = torch.randint(0, 6, (3000,))
    routing = ScenarioRouting(scenario, 6, tile=tile)
    tiles = routing.pack(torch.ones(3000, 16))
    out = routing.dropout(tiles, 0.25, training=True)
    rows = routing.unpack(out)
    assert rows.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert (rows > 0).float().mean().item() == pytest.approx(0.75, abs=0.01)
    assert (rows > 0).float().mean(0).std() < 0.03 and (rows > 0).float().mean(1).std() > 0.05  # unit by unit
    assert routing.dropout(tiles, 0.25, training=False) is tiles and routing.dropout(tiles, 0.0, True) is tiles


@pytest.mark.parametrize("tile", [None, 2, 4])
@pytest.mark.parametrize("dims", [(8, 4), (8, 3), (6, 4)], ids=["aligned", "odd-out", "odd-in"])
@pytest.mark.parametrize("backward", ["sum", "square"])
def test_the_grouped_matmul_over_scenarios_present_equals_each_rows_own_layer(tile, dims, backward):
    """`linear_of` (one grouped matmul over the tiles' rows where the kernel's alignment allows, a batched
    matmul of per-tile weights otherwise): each row gets its own scenario's layer, and the inputs, weights
    and biases the gradients of that."""
    in_dim, out_dim = dims
    scenario = torch.tensor([0, 3, 3, 1, 0, 3, 3, 3, 3, 3, 0, 1, 3, 4])
    results = []
    for path in ("linear_of", "per row"):
        torch.manual_seed(0)
        weight, bias = torch.randn(5, out_dim, in_dim, requires_grad=True), torch.randn(5, out_dim, requires_grad=True)
        x = torch.randn(len(scenario), in_dim, requires_grad=True)
        if path == "per row":
            out = torch.einsum("bi,boi->bo", x, weight[scenario]) + bias[scenario]
        else:
            routing = ScenarioRouting(scenario, 5, tile=tile)
            out = routing.unpack(routing.linear_of(routing.pack(x), lambda r, w=weight: r.gather(w),
                                                   lambda r, b=bias: r.gather(b)))
        (out.sum() if backward == "sum" else out.pow(2).sum()).backward()
        results.append([out, x.grad, weight.grad, bias.grad])
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected)
