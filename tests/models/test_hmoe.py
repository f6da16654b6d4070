"""hmoe: every tower scores every row, but learns only from its own scenario (stop-gradient on cross
scores); a per-scenario gate mixes the towers."""

from __future__ import annotations

import torch
from zoo_batch import SCENARIO_FIELD, bce, grad_norm, learns, make_batch, make_spec

from msrec.models.registry import build_model
from msrec.nn import ScenarioRouting


def build(spec, **options):
    torch.manual_seed(0)
    model = build_model("hmoe", spec, {"mlp": {"dropout": 0.0}, "tower": {"dropout": 0.0}, **options})
    torch.nn.init.normal_(model.gates.weight, std=0.5)  # non-uniform gates: the tests do not rest on the zero init
    return model


def test_only_scenario_a_rows_give_other_towers_zero_gradient():
    spec = make_spec()
    model = build(spec)
    bce(model, make_batch(spec, [0] * 8)).backward()
    assert grad_norm(model.towers, 1) == 0.0 and grad_norm(model.towers, 2) == 0.0
    assert grad_norm(model.towers, 0) > 0
    assert grad_norm(model.gates, 0) > 0
    assert grad_norm(model.gates, 1) == 0.0 and grad_norm(model.gates, 2) == 0.0
    assert grad_norm(model.bottom) > 0 and grad_norm(model.embedding) > 0


def embedding_rows_with_gradient(model) -> int:
    return sum(int((p.grad.abs().sum(1) > 0).sum()) for p in model.embedding.parameters() if p.grad is not None)


def test_gate_indicators_get_gradient_through_the_gate():
    """The gate reads the indicator embeddings `z` and passes gradient back to them: with the bottom blind to
    the indicator field, the indicator's embedding is learned through the gate alone."""
    spec = make_spec()
    batch = make_batch(spec, [1] * 6)
    rows = {}
    for gate_indicators in (True, False):
        model = build(spec, gate_indicators=gate_indicators)
        d = model.embedding.dim
        with torch.no_grad():  # e = [user; item; category; indicator; dense]: the bottom ignores the indicator
            model.bottom.layers[0].weight[:, SCENARIO_FIELD * d:(SCENARIO_FIELD + 1) * d] = 0
        bce(model, batch).backward()
        rows[gate_indicators] = embedding_rows_with_gradient(model)
        assert grad_norm(model.gates, 1) > 0 and grad_norm(model.towers, 0) == 0.0
    h_dim = model.bottom.out_dim
    model = build(spec, gate_indicators=True)
    bce(model, batch).backward()
    assert float(model.gates.weight.grad[1, :, h_dim:].abs().min()) > 0  # every weight on z learns
    distinct = sum(len(torch.unique(batch.sparse[:, f])) for f in range(SCENARIO_FIELD))
    assert rows == {False: distinct, True: distinct + 1}  # + the indicator's own row, through the gate


def test_every_tower_scores_every_row_and_other_towers_change_the_prediction():
    """Changing tower 1 changes the prediction of rows of scenarios 0 and 2: every tower scores every row."""
    spec = make_spec()
    model = build(spec).eval()
    batch = make_batch(spec, [0, 0, 2, 0, 2])
    with torch.no_grad():
        before = model(batch)
        model.towers.bias[-1][1].add_(1.0)
        after = model(batch)
    assert (after - before).abs().min() > 1e-3


def test_prediction_is_the_gated_mixture_of_all_towers():
    spec = make_spec()
    model = build(spec).eval()
    batch = make_batch(spec, [2, 0, 1, 0, 2, 1])
    with torch.no_grad():
        out = model(batch)
        h = model.bottom(model.embedding.flat(batch))
        scores = torch.stack([model.towers.scenario(b)(h) for b in range(3)], 1)  # [B, S, T]
        for i, s in enumerate(batch.scenario.tolist()):
            w = model.gates.scenario(s)(h[i]).view(3, 1).softmax(0)
            torch.testing.assert_close(out[i], (w * scores[i]).sum(0))


def test_predictions_use_the_other_scenarios_towers():
    spec = make_spec()
    model = build(spec).eval()
    batch = make_batch(spec, [0] * 5)
    with torch.no_grad():
        before = model(batch)
        model.towers.bias[-1][2].add_(1.0)
        after = model(batch)
    assert (after - before).abs().min() > 1e-3


def test_multi_task_shape_and_both_tasks_train():
    spec = make_spec(tasks=2)
    model = build(spec)
    batch = make_batch(spec, [0, 1, 2, 2, 1])
    logits = model(batch)
    assert logits.shape == (5, 2)
    bce(model, batch).backward()
    assert float(model.towers.weight[-1].grad[0].abs().sum(1).min()) > 0


def test_learns_on_synthetic_data():
    before, after = learns("hmoe")
    assert after > before + 0.08 and after > 0.6, (before, after)


def test_gates_start_with_most_weight_on_their_own_tower():
    spec = make_spec(tasks=2)
    torch.manual_seed(0)
    model = build_model("hmoe", spec, {"gate_init_own": 0.7})
    batch = make_batch(spec, [2, 0, 1])
    h = model.bottom(model.embedding.flat(batch))
    w = model.gate_weights(h, ScenarioRouting.of(batch, 3))
    expected = torch.full((3, 3), 0.15)
    expected[torch.arange(3), batch.scenario] = 0.7  # row i's own tower
    torch.testing.assert_close(w[:, :, 0], expected)
    torch.testing.assert_close(w[:, :, 1], expected)


def test_top_k_gate_mixes_its_own_and_the_largest_other_scenarios_towers_only():
    spec = make_spec(scenarios=5)
    model = build(spec, top_k=3)
    assert model.gates.weight.shape[1] == 3  # k towers per gate (T = 1), not S
    model(make_batch(spec, [3] * 6 + [1] * 4 + [0] * 2 + [2, 4]))  # training: rows seen 3 > 1 > 0 > ...
    assert model.candidates().tolist() == [[3, 1], [3, 0], [3, 1], [1, 0], [3, 1]]
    model.eval()
    batch = make_batch(spec, [2, 4, 0, 2])
    with torch.no_grad():
        before = model(batch)
        model.towers.bias[-1][0].add_(1.0)  # scenario 0's tower: rows of 2 and 4 borrow 3 and 1, not 0
        after_0 = model(batch)
        model.towers.bias[-1][1].add_(1.0)  # scenario 1's tower: borrowed by every scenario here
        after_1 = model(batch)
    assert ((after_0 - before).abs().sum(1) > 0).tolist() == [False, False, True, False]
    assert bool(((after_1 - after_0).abs() > 1e-4).all())


def test_top_k_borrowed_towers_get_no_gradient():
    spec = make_spec(scenarios=5)
    model = build(spec, top_k=2)
    bce(model, make_batch(spec, [4] * 8)).backward()  # candidates of 4: the largest other, scenario 0 (ties: lowest)
    assert model.candidates()[4].tolist() == [0]
    assert grad_norm(model.towers, 4) > 0
    assert all(grad_norm(model.towers, s) == 0.0 for s in range(4))
    assert grad_norm(model.gates, 4) > 0
