"""m3oe: T tasks give `[B, T]`, each task with its own gate, fusion weights and tower; changing a row's
scenario changes only the scenario-specific parts (its gate, its scenario view, its fusion and tower), never
the shared or task experts; another scenario's expert reaches a row only through the row's balance weight."""

from __future__ import annotations

import pytest
import torch
from zoo_batch import SCENARIO_FIELD, bce, grad_norm, learns, make_batch, make_spec, relative_change, with_scenario

from msrec.models.registry import build_model
from msrec.serve.export import ExportedModel, batch_inputs, export_model


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


# The bounded variant (`top_k`): a row balances its own scenario expert with those of N(s), the k - 1 largest
# other scenarios by training rows seen, and with nothing else.

def test_top_k_a_row_reads_its_own_and_the_largest_other_scenarios_experts_only():
    spec = make_spec(scenarios=5)
    model = build(spec, top_k=3)
    model(make_batch(spec, [3] * 6 + [1] * 4 + [0] * 2 + [2, 4]))  # training: rows seen 3 > 1 > 0 > 2 = 4
    assert model.rows_seen.tolist() == [2, 4, 1, 6, 1]
    assert model.borrowed().tolist() == [[3, 1], [3, 0], [3, 1], [1, 0], [3, 1]]
    restored = build(spec, top_k=3)
    restored.load_state_dict(model.state_dict())  # rows seen are saved with the model: the same N(s)
    assert restored.borrowed().tolist() == model.borrowed().tolist()
    model.eval()
    batch = make_batch(spec, [2, 4, 0, 2, 3])  # N: 2 -> {3, 1}, 4 -> {3, 1}, 0 -> {3, 1}, 3 -> {1, 0}
    with torch.no_grad():
        e, bank = model.embedding.flat(batch), model.views(batch)["scenario"]  # [B, k, d]: own, then N(s)
        for row, s in enumerate(batch.scenario.tolist()):
            for slot, j in enumerate([s, *model.borrowed()[s].tolist()]):
                torch.testing.assert_close(bank[row, slot], model.scenario_experts.scenario(j)(e[row:row + 1])[0])
        before = model(batch)
        changed = []
        for s in (0, 4, 2):  # scenario s's expert moves: the rows of s and of the scenarios borrowing it change
            model.scenario_experts.bias[-1][s].add_(1.0)
            after = model(batch)
            changed.append(((after - before).abs().sum(1) > 1e-6).tolist())
            before = after
    assert changed == [[False, False, True, False, True],  # 0: row of 0, row of 3 (borrows 0)
                       [False, True, False, False, False],  # 4: its own row only, nobody borrows it
                       [True, False, False, True, False]]  # 2: its own rows only


def test_top_k_one_is_the_own_expert_alone():
    spec = make_spec()
    model = build(spec, top_k=1).eval()
    batch = make_batch(spec, [0, 0, 1, 2])
    with torch.no_grad():
        before = model(batch)
        model.scenario_experts.bias[-1][1:].add_(1.0)  # every other scenario's expert
        torch.testing.assert_close(model(batch)[:2], before[:2], rtol=0, atol=0)


def test_top_k_of_every_scenario_is_the_full_model_values_and_gradients():
    spec = make_spec(tasks=2, scenarios=4)
    full, bounded = build(spec), build(spec, top_k=9)  # k = min(9, S) = S: every other scenario borrowed
    state = full.state_dict()
    for l in range(2):  # the stacked bank's layout [S, in, out]; the per-scenario MLP's [S, out, in]
        state[f"scenario_experts.weight.{l}"] = state[f"scenario_experts.weight.{l}"].transpose(1, 2)
    with torch.no_grad():
        full.scenario_balance.copy_(torch.tensor([-1.0, 0.5, 2.0, 0.0]))
    bounded.load_state_dict({**full.state_dict(), **state, "rows_seen": torch.tensor([3.0, 9.0, 1.0, 4.0])})
    batch = make_batch(spec, [0, 1, 2, 3, 3, 1, 0, 2, 2])
    torch.testing.assert_close(bounded(batch), full(batch))
    bce(full, batch).backward()
    bce(bounded, batch).backward()  # every expert learns from every row, as in the full model
    for l in range(2):
        torch.testing.assert_close(bounded.scenario_experts.weight[l].grad,
                                   full.scenario_experts.weight[l].grad.transpose(1, 2))
    torch.testing.assert_close(bounded.scenario_balance.grad, full.scenario_balance.grad)


def test_top_k_borrowed_experts_learn_from_the_rows_that_borrow_them():
    spec = make_spec(scenarios=5)
    model = build(spec, top_k=2)
    bce(model, make_batch(spec, [4] * 8)).backward()  # N(4): the largest other scenario, 0 (ties: the lowest id)
    assert model.borrowed()[4].tolist() == [0]
    assert grad_norm(model.scenario_experts, 4) > 0 and grad_norm(model.scenario_experts, 0) > 0
    assert all(grad_norm(model.scenario_experts, s) == 0.0 for s in (1, 2, 3))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_top_k_exports_and_the_export_scores_another_batch_as_the_model(fmt, tmp_path):
    """The choice of N(s) is traced (no stable sort, which ONNX lacks) and no batch size is baked in."""
    spec = make_spec(tasks=2, scenarios=5)
    model = build(spec, top_k=3)
    model(make_batch(spec, [3] * 6 + [1] * 4 + [0, 2, 4]))  # rows seen: N(s) is not by id
    model.eval()
    exported = ExportedModel(export_model(model, spec, fmt, tmp_path / ("m3oe.pt" if fmt == "torchscript" else "m3oe.onnx")))
    batch = make_batch(spec, [0, 4, 4, 2, 1, 1, 1], seed=3)  # another size and mix than the traced example
    with torch.no_grad():
        expected = model(batch)
    torch.testing.assert_close(exported(*batch_inputs(batch))[0], expected)
