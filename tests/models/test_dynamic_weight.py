"""dynamic_weight: rows of different scenarios are transformed by different generated weights, the
generator gets gradient, and the weights are generated once per scenario present in the batch."""

import pytest
import torch
from zoo_batch import bce, grad_norm, learns, make_batch, make_spec, relative_change, strong_condition

from msrec.models.registry import build_model
from msrec.nn import meta
from msrec.nn.meta import condition

VARIANTS = [{}, {"rank": 4}, {"position": "output"}, {"position": "output", "rank": 3, "generated_bias": False}]


def _model(options: dict):
    torch.manual_seed(0)
    return build_model("dynamic_weight", make_spec(), options)


@pytest.mark.parametrize("options", VARIANTS)
def test_rows_of_different_scenarios_get_different_weights(options):
    model = _model(options)
    strong_condition(model)
    batch = make_batch(model_spec := make_spec(), [0, 1, 2, 0])
    groups, z = condition(model.embedding, batch, model_spec.scenario_fields)
    assert groups.num_groups == 3
    layers = model.generated.generator(z)
    first = (layers[0].weight if layers[0].weight is not None else layers[0].gain).flatten(1)
    assert relative_change(first[0], first[1]) > 0.05 and relative_change(first[1], first[2]) > 0.05
    # The same input vector, fed through the generated network as rows of scenarios 0, 1, 2 and 0:
    x = torch.randn(1, model.generated.generator.dims[0]).expand(4, -1)
    y = model.generated(x, z, groups)
    torch.testing.assert_close(y[0], y[3], rtol=0, atol=0)
    assert relative_change(y[0], y[1]) > 0.05 and relative_change(y[1], y[2]) > 0.05


@pytest.mark.parametrize("options", VARIANTS)
def test_generator_receives_gradient(options):
    model = _model(options)
    bce(model, make_batch(make_spec(), [0, 1, 2] * 8)).backward()
    generator = model.generated.generator
    assert grad_norm(generator.head) > 0
    assert grad_norm(generator.body) > 0  # the gradient reaches the generator's hidden layer, not only its bias


def test_generated_once_per_scenario_per_batch():
    model = _model({})
    seen = []
    model.generated.generator.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    spec = make_spec()
    model(make_batch(spec, torch.tensor([0, 2]).repeat(50)))
    model(make_batch(spec, torch.tensor([0, 1, 2, 2]).repeat(50)))
    model(make_batch(spec, [1] * 30))
    assert seen == [2, 3, 1]  # one generator row per scenario present, never one per row


@pytest.mark.parametrize("options", VARIANTS)
def test_per_row_path_matches_grouped_path(options, monkeypatch):
    """Export's path (every row its own group, weights gathered per row) gives the tiled path's result."""
    model = _model(options).eval()
    batch = make_batch(make_spec(), torch.arange(3).repeat(20))
    grouped = model(batch)
    monkeypatch.setattr(meta, "exporting", lambda: True)
    assert torch.allclose(model(batch), grouped, atol=1e-6)


def test_eval_row_independent_of_batch_mates():
    model = _model({}).eval()
    batch = make_batch(make_spec(), torch.arange(3).repeat(10))
    full = model(batch)
    rows = torch.tensor([4, 7])
    assert torch.allclose(model(batch.select(rows)), full[rows], atol=1e-6)


def test_learns_on_synthetic_data():
    before, after = learns("dynamic_weight", epochs=3)
    assert after > before + 0.08, (before, after)
