"""hamur: the adapters' weights are generated per row by the one shared hyper-network, from the instance
(scenario included): they differ by scenario and by instance, no adapter weight belongs to a scenario, and
the layers compute `((h U) S) V` exactly as the generated weight `U S V` would."""

from __future__ import annotations

import torch
from zoo_batch import (
    assert_one_head_per_task,
    grad_norm,
    learns,
    make_batch,
    make_spec,
    relative_change,
    strong_condition,
    with_scenario,
)

from msrec.models.registry import build_model


def build(spec, **options):
    torch.manual_seed(0)
    model = build_model("hamur", spec, {"mlp": {"hidden": [16, 8], "dropout": 0.0}, "rank": 4, "bottleneck": 6,
                                        **options})
    strong_condition(model)  # unit-scale embeddings: the instance and the scenario reach the core at full strength
    with torch.no_grad():
        model.hyper.net.layers[-1].weight.normal_()  # the core's instance part as large as its identity start
    return model


def test_adapter_weights_differ_by_scenario_and_by_instance():
    spec = make_spec()
    model = build(spec).eval()
    batch = make_batch(spec, [0] * 4)
    moved = with_scenario(batch, 2)  # the same rows, another scenario
    with torch.no_grad():
        weights, weights_moved = model.adapter_weights(batch), model.adapter_weights(moved)
        assert set(weights) == {"0", "1"}  # one cell after each hidden layer by default
        for name, (down, up) in weights.items():
            assert down.shape == (4, [16, 8][int(name)], 6) and up.shape == (4, 6, [16, 8][int(name)])
            for w, w_moved in zip((down, up), weights_moved[name], strict=True):
                assert relative_change(w, w_moved) > 0.1  # another scenario, other weights
                assert relative_change(w[0], w[1]) > 0.1  # one scenario, two instances, two weights
        assert relative_change(model(batch), model(moved)) > 0.05


def test_no_adapter_weight_belongs_to_a_scenario_all_come_from_the_hyper_network():
    shapes = []
    for scenarios in (2, 5):
        model = build(make_spec(scenarios=scenarios))
        cells = {n: p.shape for n, p in model.named_parameters() if n.startswith("adapters.") and ".norm." not in n}
        shapes.append(cells | {n: p.shape for n, p in model.hyper.named_parameters()})
    assert shapes[0] == shapes[1]  # the same projections and hyper-network whatever the number of scenarios
    model = build(make_spec()).eval()
    with torch.no_grad():
        model.hyper.net.layers[-1].weight.zero_()  # the hyper-network's output no longer depends on its input
        batch = make_batch(make_spec(), [0, 1, 2, 2, 1])
        for down, up in model.adapter_weights(batch).values():  # so every row of every scenario has one adapter
            for w in (down, up):
                torch.testing.assert_close(w, w[:1].expand_as(w), rtol=0, atol=0)


def test_generated_layers_equal_the_formed_weights_and_the_hyper_network_learns_from_every_scenario():
    spec = make_spec()
    model = build(spec, domain_norm=False).train()
    batch = make_batch(spec, [0, 1, 2, 1, 0])
    cell = model.adapters["0"]
    core = model.cores(model.embedding.flat(batch))
    h = torch.randn(5, 16)
    expected = torch.einsum("bi,bio->bo", h, cell.down.weight(core)) + cell.down.bias
    torch.testing.assert_close(cell.down(h, core), expected, rtol=1e-4, atol=1e-5)
    assert torch.linalg.matrix_rank(cell.down.weight(core)[0]) <= 4  # the declared rank
    for s in range(3):  # one scenario's rows alone train the shared hyper-network
        model.zero_grad()
        rows = batch.select(torch.nonzero(batch.scenario == s).squeeze(1))
        torch.nn.functional.binary_cross_entropy_with_logits(model(rows), rows.labels).backward()
        assert grad_norm(model.hyper) > 0 and grad_norm(cell.down) > 0


def test_multi_task_one_head_per_task():
    spec = make_spec(tasks=2)
    model = build(spec)
    assert_one_head_per_task(model, spec, lambda: model.out)


def test_learns_on_synthetic_data():
    before, after = learns("hamur", {"mlp": {"hidden": [64, 32]}})
    assert after > before + 0.08 and after > 0.6, (before, after)
