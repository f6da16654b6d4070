"""adasparse: the sharpness alpha moves in training only (evaluation twice gives identical outputs and leaves
every buffer unchanged); factors lie in {0} u [eps, beta] and depend on the scenario; a neuron pruned for one
scenario has no influence on that scenario's rows but still on another's; the sparsity regulariser (through
the trainer's aux_loss hook) moves each layer's share of cut factors to its target."""

import pytest
import torch
from zoo_batch import assert_one_head_per_task, bce, learns, make_batch, make_spec, strong_condition

from msrec.config import TrainConfig
from msrec.data.table import TensorTable
from msrec.models.registry import build_model
from msrec.train.trainer import Trainer


def _model(spec=None, **options):
    torch.manual_seed(0)
    return build_model("adasparse", spec or make_spec(), {"mlp": {"hidden": [16, 8], "dropout": 0.0}, **options})


def _buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_evaluation_twice_gives_identical_outputs_and_moves_no_buffer():
    model = _model()
    batch = make_batch(make_spec(), [0, 1, 2, 1, 0])
    model.train()
    for _ in range(3):  # a little training first: alpha is off its start
        bce(model, batch).backward()
    model.eval()
    before = _buffers(model)
    with torch.no_grad():
        first, second = model(batch), model(batch)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    after = _buffers(model)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_alpha_grows_with_training_steps_up_to_its_cap():
    model = _model(alpha_start=1.0, alpha_step=0.5, alpha_max=2.2)
    batch = make_batch(make_spec(), [0, 1, 2])
    seen = []
    for _ in range(4):
        bce(model.train(), batch).backward()  # a training step's forward, then its backward (alpha used in it)
        seen.append(float(model.alpha))
    assert seen == pytest.approx([1.5, 2.0, 2.2, 2.2])
    model.eval()(batch)
    assert float(model.alpha) == pytest.approx(2.2)


def test_alpha_is_saved_with_the_weights():
    model = _model(alpha_step=0.25)
    model.train()(make_batch(make_spec(), [0, 1]))
    loaded = _model(alpha_step=0.25)
    loaded.load_state_dict(model.state_dict())
    assert float(loaded.alpha) == pytest.approx(1.25)


@pytest.mark.parametrize(("mode", "top"), [("fusion", 2.0), ("scaling", 2.0), ("binarization", 1.0)])
def test_factors_are_zero_or_between_eps_and_beta_and_depend_on_the_scenario(mode, top):
    model = _model(mode=mode, eps=0.3)
    strong_condition(model)
    with torch.no_grad():
        for pruner in [model.input_pruner, *model.pruners]:
            pruner.net.layers[-1].weight.normal_(0, 3.0)
        factors = model.factors(make_batch(make_spec(), [0, 1, 2] * 4))
    assert [tuple(f.shape) for f in factors] == [(12, model.embedding.flat_dim), (12, 16), (12, 8)]
    every = torch.cat([f.flatten() for f in factors])
    assert bool(((every == 0) | ((every >= 0.3) & (every <= top))).all())
    assert float((every == 0).float().mean()) > 0.05 and float(every.max()) > 0.8 * top  # cuts and the range
    first = factors[1]  # rows 0, 1, 2: scenarios 0, 1, 2
    assert float((first[0] - first[1]).abs().max()) > 1e-2 and float((first[1] - first[2]).abs().max()) > 1e-2


def test_a_neuron_pruned_for_one_scenario_does_not_change_its_rows_but_changes_anothers():
    """The first hidden layer's pruner is set by hand: neuron 3's factor is 0.095 for scenario-0 rows, under
    eps = 0.2, so it is cut, and 1.9 for scenario-1 rows. Making the neuron fire moves only scenario 1's rows."""
    model = _model(eps=0.2).eval()
    spec = make_spec()
    with torch.no_grad():
        z_dim = model.embedding.dim
        model.embedding.table.weight[model.embedding.offsets[3] + 1] = -1.0  # scenario 0's indicator embedding
        model.embedding.table.weight[model.embedding.offsets[3] + 2] = 1.0   # scenario 1's
        linear = model.pruners[0].net.layers[-1]
        linear.weight.zero_()
        linear.bias.zero_()
        linear.weight[3, :z_dim] = 3.0 / z_dim  # neuron 3's factor: 2 * sigmoid(-+3): 0.095 < eps (s0), 1.9 (s1)
    batch = make_batch(spec, [0, 1, 0, 1, 0, 1])
    with torch.no_grad():
        first = model.factors(batch)[1]
        assert float(first[0::2, 3].abs().max()) == 0.0  # cut for scenario 0
        assert float(first[1::2, 3].min()) > 1.0  # kept (near beta) for scenario 1
        before = model(batch)
        model.layers[0].layers[0].bias[3] += 5.0  # neuron 3 now fires for every row
        after = model(batch)
    torch.testing.assert_close(after[0::2], before[0::2], rtol=0, atol=0)
    assert float((after[1::2] - before[1::2]).abs().max()) > 1e-3


def test_multi_task_output_both_tasks_train():
    spec = make_spec(tasks=2)
    model = _model(spec)
    assert_one_head_per_task(model, spec, lambda: model.out)


def test_learns_on_synthetic_data():
    before, after = learns("adasparse")
    assert after > before + 0.08 and after > 0.6, (before, after)


def _cut_share_after_training(weight: float) -> list[float]:
    """Each pruned layer's share of cut factors on fresh rows after 40 trainer steps (lr 0.01, eps 0.3)."""
    spec = make_spec()
    model = _model(eps=0.3, sparsity_target=0.5, sparsity_tolerance=0.05, sparsity_weight=weight)
    rows = make_batch(spec, torch.arange(800) % 3)
    table = TensorTable(sparse=rows.sparse, dense=rows.dense, scenario=rows.scenario, labels=rows.labels)
    Trainer(model, TrainConfig(epochs=1, batch_size=20, lr=0.01, progress=False), spec.scenarios,
            spec.tasks).fit(table, table)
    with torch.no_grad():
        factors = model.factors(make_batch(spec, torch.arange(300) % 3, seed=1))
    return [float((f == 0).float().mean()) for f in factors]


def test_the_sparsity_regulariser_moves_each_layers_cut_share_to_its_target():
    """Without the regulariser almost no factor falls under eps in 40 steps; with it (target 0.5), every
    layer's share of cut factors comes near the target, and not past it far (it pulls back above the band)."""
    without, with_it = _cut_share_after_training(0.0), _cut_share_after_training(1.0)
    assert max(without) < 0.05, without
    assert all(0.35 < share < 0.7 for share in with_it), with_it


def test_the_regulariser_is_a_training_term_only():
    model = _model(sparsity_weight=1.0)
    batch = make_batch(make_spec(), [0, 1, 2])
    model.eval()(batch)
    assert model.aux_loss() is None  # evaluation leaves no term
    model.train()(batch)
    term = model.aux_loss()
    assert term is not None and term.requires_grad
    assert model.aux_loss() is None  # taken once per step: no graph kept past it
