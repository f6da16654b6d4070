"""star: partitioned normalization with per-scenario statistics, star-topology FCN, auxiliary network."""

from __future__ import annotations

import pytest
import torch
from zoo_batch import bce, grad_norm, learns, make_batch, make_spec, with_scenario

from msrec.models.registry import build_model
from msrec.nn import MLPOptions, ScenarioRouting
from msrec.nn.norm import MIN_ROWS, PartitionedNorm
from msrec.nn.star import StarFCN


def build(spec, **options):
    torch.manual_seed(0)
    return build_model("star", spec, {"mlp": {"dropout": 0.0}, **options})


def warm_up(model, spec, steps: int = 5) -> None:
    """A few training-mode passes so every scenario's running statistics move away from (0, 1)."""
    model.train()
    with torch.no_grad():
        for i in range(steps):
            model(make_batch(spec, torch.arange(30) % 3, seed=100 + i))


# ------------------------------------------------------------------ partitioned normalization
def test_eval_prediction_of_a_row_does_not_depend_on_its_batch():
    spec = make_spec()
    model = build(spec)
    warm_up(model, spec)
    model.eval()
    batch = make_batch(spec, [0, 1, 2, 0, 2, 1, 0, 0, 1])
    with torch.no_grad():
        whole = model(batch)
        alone = torch.cat([model(batch.select(torch.tensor([i]))) for i in range(len(batch))])
        other = model(batch.select(torch.tensor([3, 0, 7])))
    torch.testing.assert_close(alone, whole)
    torch.testing.assert_close(other, whole[[3, 0, 7]])


def test_training_statistics_are_those_of_the_scenarios_own_rows():
    torch.manual_seed(0)
    norm = PartitionedNorm(4, 3).train()
    scenario = torch.tensor([0, 1, 0, 2, 1, 0, 0, 1, 2, 2, 0, 1]).repeat(6)  # >= MIN_ROWS rows each
    x = torch.randn(len(scenario), 4) * 3 + 1
    y = norm(x, scenario)
    for s in range(3):
        xs = x[scenario == s]
        expected = (xs - xs.mean(0)) / torch.sqrt(xs.var(0, unbiased=False) + norm.eps)
        torch.testing.assert_close(y[scenario == s], expected)
    # Changing scenario 1's rows leaves scenario 0's outputs untouched.
    x2 = x.clone()
    x2[scenario == 1] *= 10
    torch.testing.assert_close(norm(x2, scenario)[scenario == 0], y[scenario == 0])


@pytest.mark.parametrize("rows", [1, 3, MIN_ROWS - 1])
def test_a_small_slice_in_training_is_normalised_with_its_running_statistics(rows):
    """Batch statistics of one row are mean = x, var = 0 (a constant output, no gradient to the row), of a
    few rows noise: below MIN_ROWS rows a scenario is normalised as in evaluation."""
    torch.manual_seed(0)
    norm = PartitionedNorm(4, 2).train()
    with torch.no_grad():
        norm.running_mean.copy_(torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, -1.0, 0.5, 2.0]]))
        norm.running_var.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 0.5, 2.0, 1.0]]))
        norm.gamma_s[1].uniform_(0.5, 1.5)
        norm.beta_s[1].uniform_(-1, 1)
    x = (torch.randn(MIN_ROWS + rows, 4) * 3 + 1).requires_grad_()
    scenario = torch.tensor([0] * MIN_ROWS + [1] * rows)
    expected = norm.eval()(x[MIN_ROWS:].detach(), scenario[MIN_ROWS:])
    running = norm.running_mean.clone(), norm.running_var.clone()
    y = norm.train()(x, scenario)
    torch.testing.assert_close(y[MIN_ROWS:], expected)
    y[MIN_ROWS:].pow(2).sum().backward()
    assert float(x.grad[MIN_ROWS:].abs().min()) > 0  # every feature of the small slice gets gradient
    # Scenario 0 (MIN_ROWS rows) still uses its batch statistics.
    x0 = x[:MIN_ROWS].detach()
    torch.testing.assert_close(y[:MIN_ROWS], (x0 - x0.mean(0)) / torch.sqrt(x0.var(0, unbiased=False) + norm.eps))
    # The small slice still moves its running mean (its variance from two rows on).
    assert not torch.equal(norm.running_mean[1], running[0][1])
    assert torch.equal(norm.running_var[1], running[1][1]) == (rows == 1)


def test_each_scenario_keeps_its_own_running_statistics():
    norm = PartitionedNorm(2, 3, momentum=0.5).train()
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0], [10.0, 10.0], [14.0, 10.0]])
    norm(x, torch.tensor([0, 0, 2, 2]))  # scenario 1 absent: its statistics must not move
    # A scenario's first batch sets its statistics (the initial (0, 1) leaves no trace); unbiased variances.
    torch.testing.assert_close(norm.running_mean, torch.tensor([[2.0, 4.0], [0.0, 0.0], [12.0, 10.0]]))
    torch.testing.assert_close(norm.running_var, torch.tensor([[2.0, 8.0], [1.0, 1.0], [8.0, 0.0]]))
    norm(x + 2, torch.tensor([0, 0, 2, 2]))  # the second: the mean of the two (rate 1/2 = momentum 0.5)
    torch.testing.assert_close(norm.running_mean, torch.tensor([[3.0, 5.0], [0.0, 0.0], [13.0, 11.0]]))
    norm(x + 4, torch.tensor([0, 0, 2, 2]))  # then the momentum: 0.5 * 3 + 0.5 * 6 (not the mean, 4)
    torch.testing.assert_close(norm.running_mean, torch.tensor([[4.5, 6.5], [0.0, 0.0], [14.5, 12.5]]))
    norm.eval()
    y = norm(torch.tensor([[4.5, 6.5]]), torch.tensor([0]))
    torch.testing.assert_close(y, torch.zeros(1, 2), atol=1e-4, rtol=0)


def test_running_statistics_hold_no_trace_of_their_initial_values():
    """Embeddings start with a standard deviation of 0.01: with the initial running variance 1 blended away
    at momentum 0.1, forty batches (an epoch of 80,000 rows) still left it at 0.9^40 = 0.015, about 150
    times the true 1e-4, so a model kept after its first epoch scored each scenario on its own wrong scale.
    Until 1 / (updates + 1) falls to the momentum, the running statistics are the mean of the batches'."""
    torch.manual_seed(0)
    norm = PartitionedNorm(8, 2, momentum=0.1).train()
    for _ in range(40):
        norm(torch.randn(64, 8) * 0.01 + 0.5, torch.arange(64) % 2)
    torch.testing.assert_close(norm.running_mean, torch.full((2, 8), 0.5), atol=1e-3, rtol=0)
    torch.testing.assert_close(norm.running_var, torch.full((2, 8), 1e-4), atol=0, rtol=0.3)


def test_scenario_scale_and_shift_multiply_and_add_to_the_shared_ones():
    norm = PartitionedNorm(3, 2).eval()
    with torch.no_grad():
        norm.gamma.fill_(2.0)
        norm.gamma_s[1].fill_(3.0)
        norm.beta.fill_(0.5)
        norm.beta_s[1].fill_(-1.0)
    x = torch.randn(4, 3)
    y = norm(x, torch.tensor([0, 1, 0, 1]))
    scaled = x / torch.sqrt(torch.tensor(1.0 + norm.eps))
    torch.testing.assert_close(y[0], 2 * scaled[0] + 0.5)
    torch.testing.assert_close(y[1], 6 * scaled[1] - 0.5)


def test_normalization_parameters_learn_per_scenario():
    spec = make_spec()
    model = build(spec)
    bce(model, make_batch(spec, [0, 2, 2, 0, 0])).backward()
    g = model.norm.gamma_s.grad.abs().sum(1)
    assert g[0] > 0 and g[2] > 0 and g[1] == 0


# ------------------------------------------------------------------ star topology FCN
def test_star_fcn_with_unit_scenario_weights_is_the_same_function_for_all_scenarios():
    torch.manual_seed(0)
    fcn = StarFCN(6, MLPOptions(hidden=[8, 4], dropout=0.0), 1, num_scenarios=3)
    x = torch.randn(5, 6)
    outs = [fcn(x, ScenarioRouting(torch.full((5,), s), 3)) for s in range(3)]
    torch.testing.assert_close(outs[1], outs[0])
    torch.testing.assert_close(outs[2], outs[0])
    with torch.no_grad():
        fcn.layers[0].weight_s[2].uniform_(0.5, 1.5)
    assert not torch.allclose(fcn(x, ScenarioRouting(torch.full((5,), 2), 3)), outs[0])


def test_star_layer_uses_elementwise_product_and_sum():
    torch.manual_seed(0)
    fcn = StarFCN(3, MLPOptions(hidden=[], dropout=0.0), 2, num_scenarios=2)
    layer = fcn.layers[0]
    with torch.no_grad():
        layer.weight_s[1].uniform_(-2, 2)
        layer.bias_s[1].uniform_(-2, 2)
    x = torch.randn(4, 3)
    out = fcn(x, ScenarioRouting(torch.tensor([1, 0, 1, 1]), 2))
    torch.testing.assert_close(out[0], x[0] @ (layer.weight_s[1] * layer.weight).T + layer.bias_s[1] + layer.bias)
    torch.testing.assert_close(out[1], x[1] @ layer.weight.T + layer.bias)


def test_each_scenario_layer_changes_its_own_rows_only():
    spec = make_spec()
    model = build(spec).eval()
    batch = make_batch(spec, [2, 0, 2, 1, 0])
    with torch.no_grad():
        before = model(batch)
        model.fcn.layers[0].weight_s[2].mul_(1.5)
        after = model(batch)
    assert ((after - before).abs().sum(1) > 0).tolist() == (batch.scenario == 2).tolist()


def test_scenario_b_weights_get_no_gradient_from_scenario_a_rows():
    spec = make_spec()
    model = build(spec)
    bce(model, make_batch(spec, [0] * 6)).backward()
    for layer in model.fcn.layers:
        assert float(layer.weight_s.grad[1:].abs().sum()) == 0 and float(layer.weight_s.grad[0].abs().sum()) > 0
        assert float(layer.weight.grad.abs().sum()) > 0


# ------------------------------------------------------------------ auxiliary network
def test_auxiliary_logit_is_added_and_differs_by_scenario():
    spec = make_spec()
    model = build(spec)
    warm_up(model, spec)
    model.eval()
    batch = make_batch(spec, [0] * 4)
    with torch.no_grad():
        aux = [model.aux(model.embedding.select(with_scenario(batch, s), model.aux_fields)) for s in range(3)]
        main = model.fcn(model.norm(model.embedding.flat(batch), batch.scenario), ScenarioRouting(batch.scenario, 3))
        torch.testing.assert_close(model(batch), main + aux[0])
    for s in (1, 2):
        assert (aux[s] - aux[0]).abs().min() > 1e-4
    bce(model.train(), batch).backward()
    assert grad_norm(model.aux) > 0


def test_auxiliary_network_reads_extra_fields_when_asked():
    spec = make_spec()
    model = build(spec, aux_fields=["category"])
    assert model.aux_fields == [3, 2]
    batch = make_batch(spec, [1, 1, 1])
    other = make_batch(spec, [1, 1, 1])
    other.sparse[:, 2] = batch.sparse[:, 2] % 5 + 1  # another category, same scenario
    z, z_other = (model.embedding.select(b, model.aux_fields) for b in (batch, other))
    assert (model.aux(z) - model.aux(z_other)).abs().min() > 1e-6


@pytest.mark.parametrize("partitioned_norm", [True, False])
def test_multi_task_shape(partitioned_norm):
    spec = make_spec(tasks=2)
    model = build(spec, partitioned_norm=partitioned_norm)
    logits = model(make_batch(spec, [0, 1, 2, 1]))
    assert logits.shape == (4, 2)


def test_learns_on_synthetic_data():
    before, after = learns("star")
    assert after > before + 0.08 and after > 0.6, (before, after)


def test_a_single_row_scenario_does_not_pull_its_running_variance_to_zero():
    import torch

    from msrec.nn.norm import PartitionedNorm

    norm = PartitionedNorm(4, 2).train()
    x = torch.randn(9, 4)
    scenario = torch.tensor([0] * 8 + [1])
    norm(x, scenario)
    assert torch.equal(norm.running_var[1], torch.ones(4))
    assert not torch.equal(norm.running_var[0], torch.ones(4))
