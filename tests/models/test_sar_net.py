"""sar_net: with the scenario transformation at scale 1 / shift 0, one expert and fairness coefficients of 1
it is exactly an MLP; the gate weighs shared and the row's own scenario's experts, and the scenario changes
the weights; a scenario's transformation and experts learn from its rows only; the debiasing coefficients
lie in [0, 2] and reweigh each expert (an expert at coefficient 0 has no influence)."""

import torch
from zoo_batch import (
    assert_one_head_per_task,
    bce,
    grad_norm,
    learns,
    make_batch,
    make_spec,
    strong_condition,
    with_scenario,
)

from msrec.models.registry import build_model


def _model(spec=None, **options):
    torch.manual_seed(0)
    return build_model("sar_net", spec or make_spec(),
                       {"expert": {"hidden": [16, 8]}, "shared_experts": 2, "specific_experts": 1, **options})


def test_scale_one_shift_zero_one_expert_is_an_mlp():
    model = _model(shared_experts=1, specific_experts=0).eval()
    batch = make_batch(make_spec(), [0, 1, 2, 1, 0])
    with torch.no_grad():
        mlp = model.tower(model.shared.experts[0](model.embedding.flat(batch)))
        torch.testing.assert_close(model(batch), mlp, rtol=0, atol=1e-7)
        model.gamma[1] = 2.0  # a scenario's scale differs: its rows are no longer that MLP, the others are
        out = model(batch)
    rows_1 = batch.scenario == 1
    assert float((out[rows_1] - mlp[rows_1]).abs().min()) > 1e-6
    torch.testing.assert_close(out[~rows_1], mlp[~rows_1], rtol=0, atol=1e-7)


def test_gate_weights_cover_shared_and_own_experts_and_depend_on_the_scenario():
    model = _model()
    strong_condition(model)
    batch = make_batch(make_spec(), [0] * 6)
    with torch.no_grad():
        weights = [model.gate_weights(with_scenario(batch, s)) for s in range(3)]
    assert tuple(weights[0].shape) == (6, 3)  # 2 shared experts, then 1 of the row's scenario
    torch.testing.assert_close(weights[0].sum(1), torch.ones(6))
    for a in range(3):
        for b in range(a + 1, 3):
            assert float((weights[a] - weights[b]).abs().max()) > 1e-2, (a, b)


def test_a_row_uses_its_own_scenarios_experts():
    """The specific experts' output for a row equals that row run through its scenario's expert alone."""
    model = _model().eval()
    batch = make_batch(make_spec(), [2, 0, 1, 2, 2, 0])
    with torch.no_grad():
        x = model.transform(batch)
        experts = model.experts(batch, x)
        for row, s in enumerate(batch.scenario.tolist()):
            torch.testing.assert_close(experts[row, 2], model.specific[0].scenario(s)(x[row:row + 1])[0])


def test_a_scenarios_parameters_learn_from_its_rows_only():
    model = _model()
    bce(model, make_batch(make_spec(), [0, 2, 0, 2, 0])).backward()  # no scenario-1 rows
    for p in model.specific[0].weight:
        assert float(p.grad[1].abs().sum()) == 0.0 and float(p.grad[0].abs().sum()) > 0 and float(p.grad[2].abs().sum()) > 0
    assert float(model.gamma.grad[1].abs().sum()) == 0.0 and float(model.gamma.grad[0].abs().sum()) > 0
    assert float(model.beta.grad[1].abs().sum()) == 0.0 and float(model.beta.grad[2].abs().sum()) > 0
    assert grad_norm(model.shared) > 0 and grad_norm(model.gate) > 0


def test_fairness_coefficients_lie_in_0_2_start_at_1_and_depend_on_the_scenario():
    model = _model()
    batch = make_batch(make_spec(), [0, 1, 2, 0])
    torch.testing.assert_close(model.fairness(batch), torch.ones(4, 3))
    strong_condition(model)
    with torch.no_grad():
        model.debias.net.layers[-1].weight.normal_(0, 10.0)
        c = model.fairness(batch)
    assert bool(((c >= 0) & (c <= 2)).all()) and float(c.min()) < 0.5 and float(c.max()) > 1.5
    assert float((c[0] - c[1]).abs().max()) > 1e-2 and float((c[0] - c[3]).abs().max()) == 0.0  # rows 0, 3: s0


def test_an_expert_at_coefficient_zero_has_no_influence():
    model = _model().eval()
    batch = make_batch(make_spec(), [0, 1, 2, 1, 0])
    with torch.no_grad():
        model.debias.net.layers[-1].bias[0] = -100.0  # expert 0 (shared) reweighed to 0 for every row
        before = model(batch)
        for p in model.shared.experts[0].parameters():
            p.add_(torch.randn_like(p))
        torch.testing.assert_close(model(batch), before)
        model.debias.net.layers[-1].bias[0] = 0.0
        assert float((model(batch) - before).abs().max()) > 1e-4


def test_multi_task_output_both_tasks_train():
    spec = make_spec(tasks=2)
    model = _model(spec)
    assert_one_head_per_task(model, spec, lambda: model.tower.layers[-1])


def test_learns_on_synthetic_data():
    before, after = learns("sar_net")
    assert after > before + 0.08 and after > 0.6, (before, after)
