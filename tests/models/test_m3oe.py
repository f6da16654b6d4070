"""m3oe: T tasks give `[B, T]`, each task with its own gate, fusion weights and tower; changing a row's
scenario changes only the scenario-specific parts (its gate, its scenario view, its fusion and tower), never
the shared or task experts; another scenario's expert reaches a row only through the row's balance weight."""

from __future__ import annotations

import torch
from zoo_batch import SCENARIO_FIELD, grad_norm, learns, make_batch, make_spec, relative_change, with_scenario

from msrec.models.registry import build_model


def build(spec, **options):
    torch.manual_seed(0)
    model = build_model("m3oe", spec, {"mlp": {"hidden": [16, 8], "dropout": 0.0}, "experts": 3,
                                       "tower": {"dropout": 0.0}, **options})
    with torch.no_grad():
        for p in model.embedding.parameters():  # unit-scale embeddings: rows differ clearly
            p.normal_()
        model.gates.weight[0].normal_()  # gates far from uniform
    return model


def test_two_tasks_each_with_its_own_gate_fusion_and_tower():
    spec = make_spec(tasks=2)
    model = build(spec)
    batch = make_batch(spec, [0, 1, 2, 2, 1, 0])
    assert model(batch).shape == (6, 2)
    gate, tower = model.gates.weight[0], model.towers.weight[-1]  # [S, T * E, in], [S * T, 1, in]
    for t in range(2):
        model.zero_grad()
        model(batch)[:, t].sum().backward()
        own, other = gate.grad[:, 3 * t:3 * t + 3], gate.grad[:, 3 * (1 - t):3 * (1 - t) + 3]  # E = 3 per task
        assert float(own.abs().sum()) > 0 and float(other.abs().sum()) == 0
        assert float(tower.grad[t::2].abs().sum()) > 0 and float(tower.grad[1 - t::2].abs().sum()) == 0
        for fusion in (model.scenario_fusion, model.task_fusion):
            assert float(fusion.grad[:, t].abs().sum()) > 0 and float(fusion.grad[:, 1 - t].abs().sum()) == 0
        assert grad_norm(model.shared) > 0 and grad_norm(model.scenario_experts) > 0


def test_changing_the_scenario_changes_only_the_scenario_specific_parts():
    spec = make_spec(tasks=2)
    model = build(spec).eval()
    d = model.embedding.dim
    with torch.no_grad():  # e = [user; item; category; indicator; dense]: the experts blind to the indicator
        for bank in (model.shared, model.scenario_experts, model.task_experts):
            bank.weight[0][:, SCENARIO_FIELD * d:(SCENARIO_FIELD + 1) * d] = 0
        model.scenario_balance.fill_(2.0)
        model.scenario_fusion.copy_(torch.randn(3, 2))
    batch = make_batch(spec, [0] * 5)
    moved = with_scenario(batch, 2)
    with torch.no_grad():
        views, views_moved = model.views(batch), model.views(moved)
        for shared_part in ("shared", "scenario", "task", "task_view"):  # the same for every scenario
            torch.testing.assert_close(views[shared_part], views_moved[shared_part], rtol=0, atol=0)
        for specific in ("gate", "scenario_view", "fused"):  # the row's scenario's own
            assert relative_change(views[specific], views_moved[specific]) > 0.1, specific
        assert relative_change(model(batch), model(moved)) > 0.05


def test_another_scenarios_expert_reaches_a_row_only_through_its_balance():
    spec = make_spec()
    model = build(spec).eval()
    batch = make_batch(spec, [0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        model.scenario_balance.copy_(torch.tensor([0.3, 1.5, 50.0]))  # a_2 = sigmoid(50) = 1.0 exactly
        before = model.views(batch)
        model.scenario_experts.weight[-1][0].add_(torch.randn_like(model.scenario_experts.weight[-1][0]))
        after = model.views(batch)
    change = after["scenario"][:, 0] - before["scenario"][:, 0]  # scenario 0's expert moved, on every row
    assert float(change.abs().sum(1).min()) > 0  # on every row
    a = torch.sigmoid(model.scenario_balance.detach())
    for row, s in enumerate(batch.scenario.tolist()):
        weight = a[0] if s == 0 else (1 - a[s]) / 2  # own expert: a_s; each of the 2 others: (1 - a_s) / 2
        torch.testing.assert_close(after["scenario_view"][row] - before["scenario_view"][row], weight * change[row])
    rows_of_2 = batch.scenario == 2  # balance 1: scenario 0's expert does not reach them at all
    torch.testing.assert_close(after["scenario_view"][rows_of_2], before["scenario_view"][rows_of_2], rtol=0, atol=0)


def test_learns_two_tasks_on_synthetic_data():
    before, after = learns("m3oe", {"mlp": {"hidden": [32, 16]}, "experts": 2}, tasks=2)
    assert after > before + 0.05, (before, after)
