"""scenario_bias: a shallow tower over the scenario indicators adds its (dropped-out) logit to the main one."""

from __future__ import annotations

import torch
from zoo_batch import bce, grad_norm, learns, make_batch, make_spec, with_scenario

from msrec.models.registry import build_model


def build(spec, **options):
    torch.manual_seed(0)
    return build_model("scenario_bias", spec, {"mlp": {"dropout": 0.0}, **options})


def zero_(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


def test_with_main_network_zeroed_predictions_differ_by_scenario():
    spec = make_spec()
    model = build(spec, shallow={"hidden": [8]})
    zero_(model.main)
    model.eval()
    batch = make_batch(spec, [0] * 5)
    with torch.no_grad():
        outs = [model(with_scenario(batch, s)) for s in range(3)]
    for s in range(3):  # the main network is silent: rows of one scenario all get the same score
        torch.testing.assert_close(outs[s], outs[s][:1].expand_as(outs[s]))
    assert (outs[1] - outs[0]).abs().min() > 1e-4 and (outs[2] - outs[0]).abs().min() > 1e-4


def test_dropout_one_gives_the_shallow_tower_no_gradient():
    spec = make_spec()
    model = build(spec, logit_dropout=1.0).train()
    batch = make_batch(spec, [0, 1, 2, 1, 0, 2])
    bce(model, batch).backward()
    assert grad_norm(model.shallow) == 0.0
    assert grad_norm(model.main) > 0
    # ... and, never trained, it is not used in evaluation either: the main network alone scores.
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model.main(model.embedding.flat(batch)))


def test_in_evaluation_a_kept_shallow_logit_is_added_unscaled():
    spec = make_spec()
    model = build(spec, logit_dropout=0.5, shallow={"hidden": [8]}).eval()
    batch = make_batch(spec, [0, 1, 2, 1, 0, 2])
    with torch.no_grad():
        z = model.embedding.select(batch, model.scenario_fields)
        shallow = model.shallow(z)
        assert float(shallow.abs().min()) > 1e-3
        torch.testing.assert_close(model(batch), model.main(model.embedding.flat(batch)) + shallow)


def test_without_dropout_the_shallow_tower_learns():
    spec = make_spec()
    model = build(spec, logit_dropout=0.0).train()
    bce(model, make_batch(spec, [0, 1, 2, 1, 0, 2])).backward()
    assert grad_norm(model.shallow) > 0


def test_indicators_can_be_kept_out_of_the_main_network():
    spec = make_spec()
    model = build(spec, indicators_in_main=False)
    assert model.main.layers[0].in_features == 3 * 16 + spec.dense_dim
    zero_(model.shallow)
    model.eval()
    batch = make_batch(spec, [0, 0, 0, 0])
    with torch.no_grad():  # with the shallow tower silent, the scenario no longer changes anything
        torch.testing.assert_close(model(with_scenario(batch, 2)), model(batch))
    inside = build(spec, indicators_in_main=True)
    zero_(inside.shallow)
    inside.eval()
    with torch.no_grad():
        assert not torch.allclose(inside(with_scenario(batch, 2)), inside(batch))


def test_multi_task_shape():
    spec = make_spec(tasks=2)
    model = build(spec)
    batch = make_batch(spec, [0, 1, 2])
    assert model(batch).shape == (3, 2)
    bce(model, batch).backward()
    assert float(model.shallow.layers[-1].weight.grad.abs().sum(1).min()) > 0


def test_learns_on_synthetic_data():
    before, after = learns("scenario_bias")
    assert after > before + 0.08 and after > 0.6, (before, after)
