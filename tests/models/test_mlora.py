"""mlora: scenario s's hidden layer is the shared layer plus a rank-r adapter `B_s A_s` trained on s's rows only."""

from __future__ import annotations

from itertools import pairwise

import torch
from zoo_batch import assert_one_head_per_task, bce, learns, make_batch, make_spec

from msrec.models.registry import build_model


def build(spec, **options):
    torch.manual_seed(0)
    return build_model("mlora", spec, {"mlp": {"hidden": [16, 8], "dropout": 0.0}, **options})


def randomize_adapters(model):
    with torch.no_grad():
        for layer in model.layers:
            layer.up.normal_()
            layer.bias_s.normal_()


def test_untrained_every_scenario_is_the_shared_mlp():
    spec = make_spec()
    model = build(spec).eval()
    batch = make_batch(spec, [0, 1, 2, 1, 0, 2])
    with torch.no_grad():
        out = model(batch)
        h = model.embedding.flat(batch)
        for layer in model.layers:
            h = torch.relu(layer.shared(h))
        torch.testing.assert_close(out, model.out(h))  # whatever each row's scenario


def test_each_row_goes_through_its_own_scenarios_low_rank_layer():
    spec = make_spec()
    model = build(spec, rank=2).eval()
    randomize_adapters(model)
    batch = make_batch(spec, [2, 0, 1, 1, 2, 0, 0])
    with torch.no_grad():
        out = model(batch)
        rows = []
        for i, s in enumerate(batch.scenario.tolist()):
            h = model.embedding.flat(batch)[i:i + 1]
            for layer in model.layers:
                weight, bias = layer.scenario_weight(s)
                assert torch.linalg.matrix_rank(weight - layer.shared.weight) <= 2  # a rank-2 change of W
                h = torch.relu(torch.nn.functional.linear(h, weight, bias))
            rows.append(model.out(h))
    torch.testing.assert_close(out, torch.cat(rows))
    assert len({round(float(out[i, 0]), 5) for i in (0, 1, 2)}) == 3  # the scenarios differ


def test_a_scenarios_adapter_changes_only_its_own_rows():
    spec = make_spec()
    model = build(spec).eval()
    randomize_adapters(model)
    batch = make_batch(spec, [2, 0, 0, 2, 1, 0, 1])
    with torch.no_grad():
        before = model(batch)
        model.layers[0].up[1].add_(0.5)
        after = model(batch)
    assert ((after - before).abs().sum(1) > 0).tolist() == (batch.scenario == 1).tolist()


def test_an_absent_scenarios_adapter_gets_no_gradient_the_shared_layers_do():
    spec = make_spec()
    model = build(spec).train()
    randomize_adapters(model)  # B_s = 0 would leave A_s without gradient for every scenario
    bce(model, make_batch(spec, [0, 2, 0, 2, 2, 0])).backward()

    def grad(t, s):
        g = t.grad.to_dense() if t.grad.is_sparse else t.grad
        return float(g[s].abs().sum())

    stacked = [(layer, name) for layer in model.layers for name in ("down", "up", "bias_s")]
    assert all(grad(getattr(layer, name), 1) == 0 for layer, name in stacked)
    assert all(grad(getattr(layer, name), s) > 0 for layer, name in stacked for s in (0, 2))
    assert all(float(layer.shared.weight.grad.abs().sum()) > 0 for layer in model.layers)


def test_a_scenario_owns_rank_times_in_plus_out_numbers_per_layer():
    spec3, spec4 = make_spec(scenarios=3), make_spec(scenarios=4)
    m3, m4 = build(spec3, rank_reduce=4), build(spec4, rank_reduce=4)
    dims = [m3.embedding.flat_dim, 16, 8]
    ranks = [16 // 4, 8 // 4]
    own = sum(r * (a + b) + b for (a, b), r in zip(pairwise(dims), ranks, strict=True))

    def count(m):
        return sum(p.numel() for n, p in m.named_parameters() if not n.startswith("embedding"))

    assert count(m4) - count(m3) == own
    assert [layer.down.shape[1] for layer in m3.layers] == ranks


def test_multi_task_one_head_per_task():
    spec = make_spec(tasks=2)
    model = build(spec)
    assert_one_head_per_task(model, spec, lambda: model.out)


def test_learns_on_synthetic_data():
    before, after = learns("mlora")
    assert after > before + 0.08 and after > 0.6, (before, after)


def test_hierarchical_adapters_compose_by_level_and_each_row_uses_its_combinations():
    from test_levels import A_X, A_Y, B_ANY, B_X, C_Y, batch, spec

    torch.manual_seed(0)
    model = build_model("mlora", spec(), {"mlp": {"hidden": [16, 8], "dropout": 0.0}, "rank": 2}).eval()
    layer = model.layers[0]
    with torch.no_grad():
        before = [layer.scenario_weight(s)[0].clone() for s in range(5)]
        layer.levels["up"].parts[0][1].normal_()  # country A's factor B_A
        after = [layer.scenario_weight(s)[0] for s in range(5)]
    changed = [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]
    assert changed == [s in (A_X, A_Y) for s in range(5)]  # A/x and A/y hold country A; B/x, C/y, B/* do not
    assert all(torch.linalg.matrix_rank(w - layer.shared.weight) <= 2 for w in after)
    with torch.no_grad():
        for part in (*model.layers[1].levels["up"].parts, *model.layers[1].levels["down"].parts):
            part.normal_()
        rows = batch([B_X, A_X, C_Y, B_ANY, A_Y, A_X])
        h = model.embedding.flat(rows)
        expected = []
        for i, s in enumerate(rows.scenario.tolist()):
            x = h[i:i + 1]
            for each in model.layers:
                weight, bias = each.scenario_weight(s)
                x = torch.relu(torch.nn.functional.linear(x, weight, bias))
            expected.append(model.out(x))
        torch.testing.assert_close(model(rows), torch.cat(expected))
