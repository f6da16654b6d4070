"""apg: each hidden layer's weight is `U S(z) V`, generated for the row's condition: it depends on the
condition, has the declared low rank, equal conditions give equal weights, generation runs once per
condition group (not per row), and the parameters are the low-rank ones."""

from __future__ import annotations

import torch
from zoo_batch import (
    assert_one_head_per_task,
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
    model = build_model("apg", spec, {"mlp": {"hidden": [12, 10], "dropout": 0.0}, "rank": 3, "overparam": None,
                                      **options})
    strong_condition(model)  # unit-scale embeddings: the condition reaches the generators at full strength
    with torch.no_grad():
        for generator in model.generators:  # each core's condition part as large as its identity start
            generator.net.layers[-1].weight.normal_()
    return model


def test_generated_weights_depend_on_the_condition_and_have_the_declared_rank():
    spec = make_spec()
    model = build(spec).eval()
    batch = make_batch(spec, [0, 0, 0, 1])
    moved = with_scenario(batch, 2)
    with torch.no_grad():
        weights, weights_moved = model.generated_weights(batch), model.generated_weights(moved)
        assert [tuple(w.shape) for w in weights] == [(4, model.embedding.flat_dim, 12), (4, 12, 10)]
        for w, w_moved in zip(weights, weights_moved, strict=True):
            assert relative_change(w[0], w[3]) > 0.1  # scenarios 0 and 1: other weights
            assert relative_change(w, w_moved) > 0.1  # the same rows moved to scenario 2: other weights
            torch.testing.assert_close(w[0], w[1], rtol=0, atol=0)  # equal conditions, equal weights
            assert all(int(torch.linalg.matrix_rank(m)) == 3 for m in w)  # low rank K = 3 (full would be 10, 12)
        assert relative_change(model(batch), model(moved)) > 0.05


def test_each_layer_computes_h_times_its_generated_weight():
    spec = make_spec()
    model = build(spec, overparam=5).eval()
    batch = make_batch(spec, [2, 0, 1, 1])
    with torch.no_grad():
        h = model.embedding.flat(batch)
        w0 = model.generated_weights(batch)[0]
        layer = model.layers[0]
        groups, z = _condition(model, batch)
        torch.testing.assert_close(layer(h, model._core(0, z, groups, h)), torch.einsum("bi,bio->bo", h, w0) + layer.bias,
                                   rtol=1e-4, atol=1e-5)


def _condition(model, batch):
    from msrec.nn.meta import condition

    return condition(model.embedding, batch, model.condition_fields)


def test_generation_runs_once_per_condition_group_not_per_row():
    spec = make_spec()
    seen = []
    for options, batch_scenarios, groups in (({}, [0, 2, 2, 0, 2, 0, 0], 2),  # two scenarios in the batch
                                             ({"condition_fields": ["category"]}, [1] * 40, None)):
        model = build(spec, **options)
        hooks = [g.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0])) for g in model.generators]
        batch = make_batch(spec, batch_scenarios)
        model(batch)
        for hook in hooks:
            hook.remove()
        expected = groups or len(torch.unique(batch.sparse[:, [3, 2]], dim=0))  # (scenario, category) pairs
        assert seen == [expected, expected] and expected < len(batch), seen
        seen.clear()
    model = build(spec, self_wise=True)  # the layer's own input in the condition: one core per row
    model.generators[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    model(make_batch(spec, [0, 2, 2, 0]))
    assert seen == [4]


def test_the_parameters_are_the_low_rank_ones():
    spec = make_spec(tasks=2)
    d, k, p, gen = 16, 3, 5, 32  # embed_dim, rank, over-parameterization width, generator width
    for overparam in (None, p):
        model = build_model("apg", spec, {"mlp": {"hidden": [12, 10]}, "rank": k, "overparam": overparam})
        flat = model.embedding.flat_dim
        expected = model.embedding.table.weight.numel() + 10 * 2 + 2  # embeddings, output layer
        for a, b in ((flat, 12), (12, 10)):
            factors = a * k + k * b if overparam is None else a * p + p * k + k * p + p * b
            generator = d * gen + gen + gen * k * k + k * k  # z (one indicator) -> 32 -> K x K
            expected += factors + b + generator  # + the layer's shared bias
        assert sum(q.numel() for q in model.parameters()) == expected
        assert expected < gen * (flat * 12 + 12 * 10)  # generating the full weights would take more than this


def test_multi_task_one_head_per_task():
    spec = make_spec(tasks=2)
    model = build(spec)
    assert_one_head_per_task(model, spec, lambda: model.out)


def test_learns_on_synthetic_data():
    before, after = learns("apg", {"mlp": {"hidden": [64, 32]}})
    assert after > before + 0.08 and after > 0.6, (before, after)
