"""hmoe: every tower scores every row, but learns only from its own scenario (stop-gradient on cross
scores); a per-scenario gate mixes the towers."""

from __future__ import annotations

import torch
from zoo_batch import SCENARIO_FIELD, bce, grad_norm, learns, make_batch, make_spec

from msrec.models.registry import build_model


def build(spec, **options):
    torch.manual_seed(0)
    model = build_model("hmoe", spec, {"mlp": {"dropout": 0.0}, "tower": {"dropout": 0.0}, **options})
    for gate in model.gates:  # non-uniform gates, so the test does not rest on the zero initialization
        torch.nn.init.normal_(gate.weight, std=0.5)
    return model


def test_only_scenario_a_rows_give_other_towers_zero_gradient():
    spec = make_spec()
    model = build(spec)
    bce(model, make_batch(spec, [0] * 8)).backward()
    assert grad_norm(model.towers[1]) == 0.0 and grad_norm(model.towers[2]) == 0.0
    assert grad_norm(model.towers[0]) > 0
    assert grad_norm(model.gates[0]) > 0
    assert grad_norm(model.gates[1]) == 0.0 and grad_norm(model.gates[2]) == 0.0
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
        assert grad_norm(model.gates[1]) > 0 and grad_norm(model.towers[0]) == 0.0
    h_dim = model.bottom.out_dim
    model = build(spec, gate_indicators=True)
    bce(model, batch).backward()
    assert float(model.gates[1].weight.grad[:, h_dim:].abs().min()) > 0  # every weight on z learns
    distinct = sum(len(torch.unique(batch.sparse[:, f])) for f in range(SCENARIO_FIELD))
    assert rows == {False: distinct, True: distinct + 1}  # + the indicator's own row, through the gate


def test_every_tower_scores_every_row_once():
    spec = make_spec()
    model = build(spec)
    rows = {s: 0 for s in range(3)}
    for s in range(3):
        model.towers[s].register_forward_hook(lambda mod, args, out, s=s: rows.__setitem__(s, rows[s] + len(args[0])))
    model(make_batch(spec, [0, 0, 2, 0, 2]))
    assert rows == {0: 5, 1: 5, 2: 5}


def test_prediction_is_the_gated_mixture_of_all_towers():
    spec = make_spec()
    model = build(spec).eval()
    batch = make_batch(spec, [2, 0, 1, 0, 2, 1])
    with torch.no_grad():
        out = model(batch)
        h = model.bottom(model.embedding.flat(batch))
        scores = torch.stack([model.towers[b](h) for b in range(3)], 1)  # [B, S, T]
        for i, s in enumerate(batch.scenario.tolist()):
            w = model.gates[s](h[i]).view(3, 1).softmax(0)
            torch.testing.assert_close(out[i], (w * scores[i]).sum(0))


def test_predictions_use_the_other_scenarios_towers():
    spec = make_spec()
    model = build(spec).eval()
    batch = make_batch(spec, [0] * 5)
    with torch.no_grad():
        before = model(batch)
        model.towers[2].layers[-1].bias.add_(1.0)
        after = model(batch)
    assert (after - before).abs().min() > 1e-3


def test_multi_task_shape_and_both_tasks_train():
    spec = make_spec(tasks=2)
    model = build(spec)
    batch = make_batch(spec, [0, 1, 2, 2, 1])
    logits = model(batch)
    assert logits.shape == (5, 2)
    bce(model, batch).backward()
    assert float(model.towers[0].layers[-1].weight.grad.abs().sum(1).min()) > 0


def test_learns_on_synthetic_data():
    before, after = learns("hmoe")
    assert after > before + 0.08 and after > 0.6, (before, after)


def test_gates_start_with_most_weight_on_their_own_tower():
    spec = make_spec(tasks=2)
    torch.manual_seed(0)
    model = build_model("hmoe", spec, {"gate_init_own": 0.7})
    batch = make_batch(spec, [2, 0, 1])
    h = model.bottom(model.embedding.flat(batch))
    w = model.gate_weights(tuple(h[i:i + 1] for i in (1, 2, 0)))  # rows grouped by scenario 0, 1, 2
    expected = torch.full((3, 3), 0.15).fill_diagonal_(0.7)
    torch.testing.assert_close(w[:, :, 0], expected)
    torch.testing.assert_close(w[:, :, 1], expected)
