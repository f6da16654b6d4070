"""ple: shared experts (and shared gates) learn from every row; a scenario's experts, gates and tower only
from its own rows; every level's gates are distributions."""

from __future__ import annotations

import pytest
import torch
from zoo_batch import assert_one_head_per_task, bce, grad_norm, learns, make_batch, make_spec

from msrec.data.table import Batch
from msrec.models.registry import build_model


def build(spec, **options):
    torch.manual_seed(0)
    model = build_model("ple", spec, {"mlp": {"dropout": 0.0, "hidden": [16, 8]}, "tower": {"dropout": 0.0}, **options})
    for level in model.levels:  # gates far from uniform
        torch.nn.init.normal_(level.gates.weight, std=1.0)
        if level.shared_gate is not None:
            torch.nn.init.normal_(level.shared_gate.linear.weight, std=1.0)
    return model


@pytest.mark.parametrize("levels", [1, 3])
def test_no_scenario_b_rows_gives_b_experts_gates_and_tower_exactly_zero_gradient(levels):
    spec = make_spec()
    model = build(spec, levels=levels)
    bce(model, make_batch(spec, [0, 2, 0, 2, 2, 0, 0])).backward()
    assert len(model.levels) == levels
    assert grad_norm(model.towers, 1) == 0.0
    for s in (0, 2):
        assert grad_norm(model.towers, s) > 0
    for k, level in enumerate(model.levels):  # one expert per scenario: group s is scenario s's expert
        assert grad_norm(level.specific, 1) == 0.0 and grad_norm(level.gates, 1) == 0.0, k
        for s in (0, 2):
            assert grad_norm(level.specific, s) > 0 and grad_norm(level.gates, s) > 0, (k, s)
        assert all(grad_norm(expert) > 0 for expert in level.shared.experts), k
        assert (level.shared_gate is None) == (k == levels - 1)
        if level.shared_gate is not None:
            assert grad_norm(level.shared_gate) > 0, k
    assert grad_norm(model.embedding) > 0


@pytest.mark.parametrize("specific_experts", [1, 2])
def test_scenario_experts_change_only_their_own_rows(specific_experts):
    spec = make_spec()
    model = build(spec, specific_experts=specific_experts).eval()
    batch = make_batch(spec, [2, 0, 0, 2, 1, 0, 0, 2])
    with torch.no_grad():
        before = model(batch)
        group = 1 * specific_experts + specific_experts - 1  # scenario 1's last expert
        model.levels[1].specific.bias[0][group].add_(1.0)
        after = model(batch)
    assert ((after - before).abs().sum(1) > 0).tolist() == (batch.scenario == 1).tolist()


def test_gate_weights_sum_to_one_over_shared_and_own_experts():
    spec = make_spec()
    model = build(spec, levels=2, shared_experts=3, specific_experts=2)
    weights = model.gate_weights(make_batch(spec, [1, 0, 2, 2, 1, 0]))
    assert [tuple(w.shape) for w in weights] == [(6, 5), (6, 5)]
    for w in weights:
        assert bool((w >= 0).all())
        torch.testing.assert_close(w.sum(1), torch.ones(6))


def test_rows_are_independent_and_in_order():
    """In eval mode, scoring a mixed batch equals scoring each row alone (routing and merge keep rows apart)."""
    spec = make_spec()
    model = build(spec).eval()
    batch = make_batch(spec, [1, 0, 2, 2, 1, 0, 1])
    with torch.no_grad():
        out = model(batch)
        alone = torch.cat([model(Batch(sparse=batch.sparse[i:i + 1], dense=batch.dense[i:i + 1],
                                       scenario=batch.scenario[i:i + 1], labels=batch.labels[i:i + 1]))
                           for i in range(len(batch))])
    torch.testing.assert_close(out, alone)


def test_multi_task_one_head_per_task_both_train():
    spec = make_spec(tasks=2)
    model = build(spec)
    assert_one_head_per_task(model, spec, lambda: model.towers.weight[-1], scenario=2)
    assert grad_norm(model.levels[0].shared) > 0


def test_learns_on_synthetic_data():
    before, after = learns("ple", {"mlp": {"hidden": [64, 32]}})
    assert after > before + 0.08 and after > 0.6, (before, after)


def test_learns_two_tasks():
    before, after = learns("ple", {"mlp": {"hidden": [64, 32]}}, tasks=2)
    assert after > before + 0.05, (before, after)
