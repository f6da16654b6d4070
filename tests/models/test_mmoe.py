"""mmoe: shared experts learn from every row; the gate and the tower of a scenario only from its own rows."""

from __future__ import annotations

import torch
from zoo_batch import assert_one_head_per_task, bce, grad_norm, learns, make_batch, make_spec

from msrec.models.registry import build_model


def build(spec, **options):
    torch.manual_seed(0)
    model = build_model("mmoe", spec, {"mlp": {"dropout": 0.0, "hidden": [16, 8]}, "tower": {"dropout": 0.0}, **options})
    torch.nn.init.normal_(model.gates.weight, std=1.0)  # gates far from uniform: each expert's weight differs by row
    return model


def test_no_scenario_b_rows_gives_gate_and_tower_b_exactly_zero_gradient():
    spec = make_spec()
    model = build(spec)
    bce(model, make_batch(spec, [0, 2, 0, 2, 2, 0, 0])).backward()
    assert grad_norm(model.gates, 1) == 0.0 and grad_norm(model.towers, 1) == 0.0
    for s in (0, 2):
        assert grad_norm(model.gates, s) > 0 and grad_norm(model.towers, s) > 0
    assert all(grad_norm(expert) > 0 for expert in model.experts.experts)
    assert grad_norm(model.embedding) > 0


def test_gate_weights_are_a_distribution_from_the_rows_own_scenario_gate():
    spec = make_spec()
    model = build(spec, experts=5)
    batch = make_batch(spec, [1, 0, 2, 2, 1, 0, 1, 2])
    w = model.gate_weights(batch)
    assert w.shape == (8, 5) and bool((w >= 0).all())
    torch.testing.assert_close(w.sum(1), torch.ones(8))
    e = model.embedding.flat(batch)
    expected = torch.stack([model.gates.scenario(int(s))(e[i]).softmax(-1) for i, s in enumerate(batch.scenario)])
    torch.testing.assert_close(w, expected)


def test_each_row_is_scored_by_its_scenario_gate_and_tower_in_row_order():
    spec = make_spec()
    model = build(spec).eval()
    batch = make_batch(spec, [1, 0, 2, 2, 1, 0, 1])
    with torch.no_grad():
        out = model(batch)
        e = model.embedding.flat(batch)
        x = model.experts(e)  # [B, E, d]
        expected = torch.stack([model.towers.scenario(int(s))(model.gates.scenario(int(s))(e[i:i + 1]).softmax(-1) @ x[i])[0]
                                for i, s in enumerate(batch.scenario)])
    torch.testing.assert_close(out, expected)


def test_multi_task_one_head_per_task_both_train():
    spec = make_spec(tasks=2)
    model = build(spec)
    assert_one_head_per_task(model, spec, lambda: model.towers.weight[-1], scenario=0)
    assert grad_norm(model.experts) > 0


def test_learns_on_synthetic_data():
    before, after = learns("mmoe", {"mlp": {"hidden": [64, 32]}})
    assert after > before + 0.08 and after > 0.6, (before, after)


def test_learns_two_tasks():
    before, after = learns("mmoe", {"mlp": {"hidden": [64, 32]}}, tasks=2)
    assert after > before + 0.05, (before, after)
