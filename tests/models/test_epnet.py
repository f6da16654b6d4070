"""epnet: the gate reads the general embeddings through a stop-gradient (its path alone gives them zero
gradient), gives one scale in [0, 2] per field, depends on the scenario only through its input, and a field
scaled to 0 has no influence; the main path trains every main embedding, the scenario's included."""

import torch
from zoo_batch import (
    SCENARIO_FIELD,
    assert_one_head_per_task,
    bce,
    grad_norm,
    learns,
    make_batch,
    make_spec,
    with_scenario,
)

from msrec.models.registry import build_model


def _model(spec=None, **options):
    torch.manual_seed(0)
    model = build_model("epnet", spec or make_spec(), {"mlp": {"hidden": [32, 16]}, **options})
    return model


def _perturb_gate(model, std=1.0):
    with torch.no_grad():  # the gate starts at exactly 1 (zero output layer); move it so gradient flows through
        model.gate.net.layers[-1].weight.normal_(0, std)


def test_gate_starts_at_one_with_one_scale_per_field():
    model = _model()
    batch = make_batch(make_spec(), [0, 1, 2, 0])
    scales = model.scales(batch)
    assert tuple(scales.shape) == (4, 4)  # user, item, category, scenario
    torch.testing.assert_close(scales, torch.ones_like(scales))


def test_gate_path_alone_gives_the_general_embeddings_zero_gradient():
    model = _model()
    _perturb_gate(model)
    batch = make_batch(make_spec(), [0, 1, 2] * 5)
    (model.scales(batch) - 0.5).pow(2).sum().backward()
    grad = model.embedding.table.weight.grad
    assert grad is None or int(torch.count_nonzero(grad)) == 0
    assert grad_norm(model.gate) > 0 and grad_norm(model.scenario_embedding) > 0


def test_scales_lie_in_0_2_and_use_the_range():
    model = _model()
    _perturb_gate(model, 10.0)
    with torch.no_grad():
        scales = model.scales(make_batch(make_spec(), [0, 1, 2, 0, 1, 2]))
    assert bool(((scales >= 0) & (scales <= 2)).all())
    assert float(scales.min()) < 0.5 and float(scales.max()) > 1.5


def test_the_scenario_reaches_the_gate_through_its_input_only():
    """Same rows and the same general embeddings: only the gate's scenario input differs, and the scales
    differ; the same scenario input gives the same scales."""
    model = _model()
    _perturb_gate(model)
    batch = make_batch(make_spec(), [0] * 6)
    with torch.no_grad():
        fields = model.embedding.fields(batch)
        scales = [model.scales(with_scenario(batch, s), fields) for s in range(3)]
        again = model.scales(with_scenario(batch, 1), fields)
    torch.testing.assert_close(again, scales[1])
    for a in range(3):
        for b in range(a + 1, 3):
            assert float((scales[a] - scales[b]).abs().max()) > 1e-2, (a, b)


def test_a_field_scaled_to_zero_has_no_influence():
    model = _model().eval()
    with torch.no_grad():  # the gate's bias for field 1 (item) very negative: its scale is 0 for every row
        model.gate.net.layers[-1].bias[1] = -100.0
    batch = make_batch(make_spec(), [0, 1, 2, 0])
    other = make_batch(make_spec(), [0, 1, 2, 0], seed=1)
    moved = batch.sparse.clone()
    moved[:, 1] = other.sparse[:, 1]  # other items: the item embedding changes, the gate input too
    changed = type(batch)(sparse=moved, dense=batch.dense, scenario=batch.scenario, labels=batch.labels)
    with torch.no_grad():
        torch.testing.assert_close(model(changed), model(batch))
        model.gate.net.layers[-1].bias[1] = 0.0
        assert float((model(changed) - model(batch)).abs().max()) > 1e-4  # the item matters when not scaled to 0


def test_main_path_trains_the_scenario_embedding():
    model = _model()
    _perturb_gate(model)
    bce(model, make_batch(make_spec(), [0, 1, 2] * 5)).backward()
    grad = model.embedding.table.weight.grad
    rows = model.embedding.offsets[SCENARIO_FIELD] + torch.tensor([1, 2, 3])  # scenarios 0..2 -> ids 1..3
    assert bool((grad[rows].abs().sum(1) > 0).all())
    assert grad_norm(model.gate) > 0 and grad_norm(model.scenario_embedding) > 0


def test_multi_task_output_both_tasks_train():
    spec = make_spec(tasks=2)
    model = _model(spec)
    assert_one_head_per_task(model, spec, lambda: model.mlp.layers[-1])


def test_learns_on_synthetic_data():
    before, after = learns("epnet")
    assert after > before + 0.08 and after > 0.6, (before, after)
