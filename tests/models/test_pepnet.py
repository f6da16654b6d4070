"""pepnet: the EPNet gate reads the main embeddings through a stop-gradient (its path alone gives them zero
gradient), its scales lie in [0, 2] and depend on the scenario; the PPNet gates cannot pull the embeddings
nor EPNet; the main path trains every main embedding."""

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
    return build_model("pepnet", spec or make_spec(), {"mlp": {"hidden": [32, 16]}, **options})


def _perturb_gates(model, std=1.0):
    with torch.no_grad():  # gates start at exactly 1 (zero output layer); move them so gradient flows through
        for gate in [model.epnet, *model.main.gates]:
            gate.net.layers[-1].weight.normal_(0, std)


def _main_grad_is_zero(model):
    grad = model.embedding.table.weight.grad
    return grad is None or int(torch.count_nonzero(grad)) == 0


def test_gates_start_at_one():
    model = _model()
    batch = make_batch(make_spec(), [0, 1, 2, 0])
    e = model.embedding.flat(batch)
    torch.testing.assert_close(model.epnet_gate(batch), torch.ones_like(e))
    assert all(bool((d == 1).all()) for d in model.ppnet_gates(batch, e))


def test_epnet_gate_path_alone_gives_main_embeddings_zero_gradient():
    model = _model()
    _perturb_gates(model)
    batch = make_batch(make_spec(), [0, 1, 2] * 5)
    (model.epnet_gate(batch) - 0.5).pow(2).sum().backward()
    assert _main_grad_is_zero(model)
    assert grad_norm(model.epnet) > 0 and grad_norm(model.scenario_embedding) > 0


def test_ppnet_gate_path_alone_gives_main_embeddings_and_epnet_zero_gradient():
    model = _model()
    _perturb_gates(model)
    batch = make_batch(make_spec(), [0, 1, 2] * 5)
    e = model.embedding.flat(batch)
    o_ep = model.epnet_gate(batch, e) * e
    sum((d - 0.5).pow(2).sum() for d in model.ppnet_gates(batch, o_ep)).backward()
    assert _main_grad_is_zero(model)
    assert grad_norm(model.epnet) == 0.0 and grad_norm(model.scenario_embedding) == 0.0
    assert all(grad_norm(gate) > 0 for gate in model.main.gates) and grad_norm(model.personal_embedding) > 0


def test_gates_lie_in_0_2_with_the_right_shapes():
    model = _model()
    _perturb_gates(model, 10.0)
    batch = make_batch(make_spec(), [0, 1, 2, 0])
    with torch.no_grad():
        e = model.embedding.flat(batch)
        delta_ep = model.epnet_gate(batch, e)
        deltas = model.ppnet_gates(batch, delta_ep * e)
    assert tuple(delta_ep.shape) == tuple(e.shape)
    assert [tuple(d.shape) for d in deltas] == [(4, 32), (4, 16)]
    for d in [delta_ep, *deltas]:
        assert bool(((d >= 0) & (d <= 2)).all())
    assert float(delta_ep.min()) < 0.5 and float(delta_ep.max()) > 1.5  # the range is used, not just [0, 2]


def test_the_scenario_changes_the_epnet_gate():
    """Same rows and the same main embeddings: only the scenario-indicator input of the gate differs."""
    model = _model()
    _perturb_gates(model)
    batch = make_batch(make_spec(), [0] * 6)
    with torch.no_grad():
        e = model.embedding.flat(batch)
        gates = [model.epnet_gate(with_scenario(batch, s), e) for s in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert float((gates[a] - gates[b]).abs().max()) > 1e-3, (a, b)


def test_main_path_trains_the_scenario_embedding():
    model = _model()
    _perturb_gates(model)
    bce(model, make_batch(make_spec(), [0, 1, 2] * 5)).backward()
    grad = model.embedding.table.weight.grad
    rows = model.embedding.offsets[SCENARIO_FIELD] + torch.tensor([1, 2, 3])  # scenarios 0..2 -> ids 1..3
    assert bool((grad[rows].abs().sum(1) > 0).all())
    assert grad_norm(model.epnet) > 0 and all(grad_norm(gate) > 0 for gate in model.main.gates)


def test_multi_task_output_both_tasks_train():
    spec = make_spec(tasks=2)
    model = _model(spec)
    assert_one_head_per_task(model, spec, lambda: model.main.out)


def test_learns_on_synthetic_data():
    before, after = learns("pepnet")
    assert after > before + 0.08 and after > 0.6, (before, after)


def test_learns_two_tasks():
    before, after = learns("pepnet", tasks=2)
    assert after > before + 0.05, (before, after)
