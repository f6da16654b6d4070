"""ppnet: the gate path alone leaves the main embeddings with zero gradient while the gate learns; the
main path still trains the scenario embedding (only the gate's copy of the embeddings is detached)."""

import torch
from zoo_batch import SCENARIO_FIELD, bce, grad_norm, learns, make_batch, make_spec

from msrec.models.registry import build_model
from msrec.schema import FeatureSpec


def _model(spec=None, **options):
    torch.manual_seed(0)
    return build_model("ppnet", spec or make_spec(), options)


def _perturb_gates(model, std=1.0):
    with torch.no_grad():  # gates start at exactly 1 (zero output layer); move them so gradient flows through
        for gate in model.main.gates:
            gate.net.layers[-1].weight.normal_(0, std)


def test_gate_path_alone_gives_main_embeddings_zero_gradient():
    model = _model()
    _perturb_gates(model)
    batch = make_batch(make_spec(), [0, 1, 2] * 5)
    loss = sum((delta - 0.5).pow(2).sum() for delta in model.gate_values(batch))
    loss.backward()
    main = model.embedding.table.weight.grad
    assert main is None or torch.count_nonzero(main) == 0
    for gate in model.main.gates:
        assert grad_norm(gate) > 0
    assert grad_norm(model.gate_embedding) > 0  # the gate's own scenario / id embeddings learn


def test_gate_path_adds_nothing_to_the_main_embedding_gradient():
    """The full loss gives the main embeddings exactly the gradient it gives with the gates frozen."""
    model = _model(mlp={"dropout": 0.0})
    _perturb_gates(model)  # gates away from 1, so they shape the main gradient
    batch = make_batch(make_spec(), [0, 1, 2] * 5)
    bce(model, batch).backward()
    full = model.embedding.table.weight.grad.clone()
    model.zero_grad()
    deltas = [d.detach() for d in model.gate_values(batch)]
    h = model.embedding.flat(batch)
    for layer, delta in zip(model.main.layers, deltas, strict=True):
        h = model.main.dropout(layer(h) * delta)
    torch.nn.functional.binary_cross_entropy_with_logits(model.main.out(h), batch.labels).backward()
    assert torch.allclose(full, model.embedding.table.weight.grad, atol=1e-7)


def test_main_path_trains_the_scenario_embedding():
    model = _model()
    batch = make_batch(make_spec(), [0, 1, 2] * 5)
    bce(model, batch).backward()
    grad = model.embedding.table.weight.grad
    rows = model.embedding.offsets[SCENARIO_FIELD] + torch.tensor([1, 2, 3])  # scenarios 0..2 -> ids 1..3
    assert bool((grad[rows].abs().sum(1) > 0).all())


def test_gates_scale_each_hidden_layer_in_0_2():
    model = _model(mlp={"hidden": [32, 16]})
    _perturb_gates(model, 10.0)
    deltas = model.gate_values(make_batch(make_spec(), [0, 1, 2, 0]))
    assert [tuple(d.shape) for d in deltas] == [(4, 32), (4, 16)]
    assert all(bool(((d >= 0) & (d <= 2)).all()) for d in deltas)


def test_personalization_fields():
    spec = make_spec()  # fields user, item, category, scenario: no *_id names -> the two largest vocabularies
    assert _model(spec).gate_embedding.fields == [SCENARIO_FIELD, 0, 1]
    assert _model(spec, personal_fields=["category"]).gate_embedding.fields == [SCENARIO_FIELD, 2]
    assert _model(spec, personal_fields=[]).gate_embedding.fields == [SCENARIO_FIELD]
    named = FeatureSpec(sparse_fields=["user_id", "zip", "movie_id", "scenario"], sparse_vocab=[5, 90, 7, 4],
                        list_fields=[], list_vocab=[], dense_dim=1, scenario_fields=[3], scenarios=["a", "b", "c"],
                        tasks=["y"])
    assert _model(named).gate_embedding.fields == [3, 0, 2]


def test_learns_on_synthetic_data():
    before, after = learns("ppnet", epochs=3)
    assert after > before + 0.08, (before, after)
