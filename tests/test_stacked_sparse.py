"""Row-sparse updates of the per-scenario stacked parameters (`train.scenario_updates`, msrec.train.optim): only
the parameters a part declares stacked (`nn.routing.stacked`) are updated row-sparsely, a step leaves the slices
and the optimizer state of the scenarios absent from its batch untouched (dense Adam moves them), their
gradient is row-sparse, `RowSparseAdam` is Adam where every slice is present, and its state round-trips."""

from __future__ import annotations

import copy

import pytest
import torch

from msrec.config import TrainConfig
from msrec.models.registry import build_model
from msrec.train.optim import CombinedOptimizer, RowSparseAdam, build_optimizer, scenario_mode
from tests.models.zoo_batch import bce, make_batch, make_spec

SMALL = {"embed_dim": 4, "mlp": {"hidden": [8], "dropout": 0.0}}
MODELS = {"star": SMALL, "split_merge": {**SMALL, "tower": {"hidden": [4]}},
          "ple": {**SMALL, "tower": {"hidden": [4]}}, "separate": SMALL}


def setup(model: str, mode: str = "row_sparse", options: dict | None = None, **train):
    torch.manual_seed(0)
    spec = make_spec()
    net = build_model(model, spec, options or MODELS[model])
    cfg = TrainConfig(scenario_updates=mode, weight_decay=0.1, lr=0.01, **train)
    return spec, net, build_optimizer(net, cfg)


def step(net, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    bce(net, batch).backward()
    optimizer.step()


def stacked(net) -> dict[str, torch.Tensor]:
    return {k: p for k, p in net.named_parameters() if getattr(p, "scenario_stacked", False)}


def test_only_the_declared_parameters_are_updated_row_sparsely():
    """star with a hidden width equal to S: its shared `weight [3, in]` has S rows but is not per scenario."""
    _, net, optimizer = setup("star", options={"embed_dim": 4, "mlp": {"hidden": [3], "dropout": 0.0}})
    assert net.fcn.layers[0].weight.shape[0] == 3 == net.num_scenarios
    rows = {id(p) for p in optimizer.parts["scenarios"].param_groups[0]["params"]}
    names = {k for k, p in net.named_parameters() if id(p) in rows}
    assert names == {f"fcn.layers.{i}.{n}" for i in range(2) for n in ("weight_s", "bias_s")} | {"norm.gamma_s",
                                                                                                 "norm.beta_s"}
    dense = {id(p) for p in optimizer.parts["dense"].param_groups[0]["params"]}
    assert id(net.fcn.layers[0].weight) in dense and not rows & dense


@pytest.mark.parametrize("model", MODELS)
def test_a_step_leaves_absent_scenarios_slices_and_state_untouched(model):
    spec, net, optimizer = setup(model)
    step(net, optimizer, make_batch(spec, [0, 1, 2] * 8, seed=1))  # every scenario: moments of every slice
    params = stacked(net)
    assert params
    state = optimizer.parts["scenarios"].state
    before = {k: (p.detach().clone(), [state[p][m].clone() for m in ("exp_avg", "exp_avg_sq")])
              for k, p in params.items()}
    step(net, optimizer, make_batch(spec, [0, 1] * 12, seed=2))  # scenario 2 absent
    moved = []
    for key, p in params.items():
        weight, moments = before[key]
        assert torch.equal(p[2], weight[2]), key  # no momentum, no weight decay for an absent scenario
        for m, old in zip(("exp_avg", "exp_avg_sq"), moments, strict=True):
            assert torch.equal(state[p][m][2], old[2]), (key, m)
        moved.append(not torch.equal(p[0], weight[0]))
    assert all(moved)


@pytest.mark.parametrize("model", ["star", "split_merge"])
def test_dense_updates_move_absent_scenarios(model):
    """`scenario_updates: dense` is one Adam over every parameter (msrec 0.1's path): its momentum moves an
    absent scenario's slices; the gradients stay dense."""
    spec, net, optimizer = setup(model, "dense")
    assert isinstance(optimizer, CombinedOptimizer) and "scenarios" not in optimizer.parts
    step(net, optimizer, make_batch(spec, [0, 1, 2] * 8, seed=1))
    params = stacked(net)
    before = {k: p.detach().clone() for k, p in params.items()}
    step(net, optimizer, make_batch(spec, [0, 1] * 12, seed=2))
    assert all(not p.grad.is_sparse for p in params.values())
    assert any(not torch.equal(p[2], before[k][2]) for k, p in params.items())


def test_the_gathered_gradient_holds_the_present_scenarios_only():
    spec, net, optimizer = setup("star")
    optimizer.zero_grad(set_to_none=True)
    bce(net, make_batch(spec, [2, 0, 2, 0] * 4, seed=3)).backward()
    grad = net.fcn.layers[0].weight_s.grad
    assert grad.is_sparse and grad.coalesce().indices()[0].tolist() == [0, 2]
    assert not net.norm.gamma_s.grad.is_sparse  # used per row outside the tiles: dense, its absent row zero
    assert net.norm.gamma_s.grad[1].abs().sum() == 0


@pytest.mark.parametrize("decoupled", [False, True])
def test_row_sparse_adam_is_adam_when_every_row_is_present(decoupled):
    torch.manual_seed(0)
    start = torch.randn(4, 3, 2)
    dense, lazy = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    reference = (torch.optim.AdamW if decoupled else torch.optim.Adam)([dense], lr=0.01, weight_decay=0.1)
    optimizer = RowSparseAdam([lazy], lr=0.01, weight_decay=0.1, decoupled=decoupled)
    for sparse in (True, False, True):
        g = torch.randn(4, 3, 2)
        dense.grad, lazy.grad = g.clone(), g.to_sparse(1) if sparse else g.clone()
        reference.step()
        optimizer.step()
    torch.testing.assert_close(lazy, dense, rtol=0, atol=1e-7)


def test_row_sparse_adam_updates_only_the_gradients_rows():
    p = torch.nn.Parameter(torch.ones(5, 2))
    optimizer = RowSparseAdam([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.sparse_coo_tensor(torch.tensor([[3, 1, 3]]), torch.ones(3, 2), (5, 2))  # row 3 twice: summed
    optimizer.step()
    assert torch.equal(p[[0, 2, 4]], torch.ones(3, 2)) and (p[[1, 3]] < 1).all()
    assert optimizer.state[p]["exp_avg"][3, 0] == pytest.approx(0.1 * (2 + 0.5))  # (1 - beta1) * (g + decay * w)


def test_the_optimizer_state_round_trips():
    """A checkpoint's optimizer state (`state_dict`, `scenarios` included) continues training exactly."""
    spec, net, optimizer = setup("star")
    batches = [make_batch(spec, [0, 1, 2] * 8, seed=s) for s in range(3)]
    step(net, optimizer, batches[0])
    saved_model, saved_state = copy.deepcopy(net.state_dict()), copy.deepcopy(optimizer.state_dict())
    assert "scenarios" in saved_state
    step(net, optimizer, batches[1])
    _, again, resumed = setup("star")
    again.load_state_dict(saved_model)
    resumed.load_state_dict(saved_state)
    step(again, resumed, batches[1])
    for (key, a), b in zip(net.named_parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b), key  # (partitioned norm's running statistics: their update counts are not saved)


def test_distributed_runs_update_densely():
    cfg = TrainConfig()
    assert scenario_mode(cfg, False, torch.device("cpu")) == "row_sparse"
    assert scenario_mode(cfg, True, torch.device("cpu")) == "dense"


def test_a_run_resumed_from_a_checkpoint_is_identical(synthetic_config, tmp_path):
    """The optimizer state of the stacked parameters (`scenarios`) goes through a real checkpoint (DCP) and back:
    split_merge resumed from a mid-epoch checkpoint ends with the uninterrupted run's weights."""
    import shutil

    from safetensors.torch import load_file

    import msrec
    from msrec.runs import checkpoint_dir, checkpoint_files

    cfg = synthetic_config(model={"name": "split_merge", "embed_dim": 4, "hidden": [8],
                                  "tower": {"hidden": [4]}},
                           train={"epochs": 2, "batch_size": 200, "weight_decay": 0.01,
                                  "checkpoint": {"every_steps": 5, "keep": 10, "keep_after": True}})
    ref = msrec.train(cfg, out=tmp_path / "ref").run_dir
    out = tmp_path / "resumed"
    checkpoint_dir(out).mkdir()
    first = checkpoint_files(ref)[0]
    shutil.copytree(first, checkpoint_dir(out) / first.name)
    msrec.train(cfg, out=out, resume=True)
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_gradient_of_distinct_ascending_rows_updates_as_its_coalesced_form():
    """Autograd stores RowSparseGather's gradient without its coalesced flag: the optimizer takes its distinct
    ascending rows as they are (no second coalescing), with the result of the coalesced gradient."""
    torch.manual_seed(0)
    start, g = torch.randn(6, 2), torch.randn(3, 2)
    params = [torch.nn.Parameter(start.clone()) for _ in range(2)]
    params[0].grad = torch.sparse_coo_tensor(torch.tensor([[1, 3, 4]]), g, (6, 2))
    params[1].grad = params[0].grad.coalesce()
    assert not params[0].grad.is_coalesced()
    for p in params:
        RowSparseAdam([p], lr=0.1).step()
    torch.testing.assert_close(params[0], params[1], rtol=0, atol=0)
    assert torch.equal(params[0][[0, 2, 5]], start[[0, 2, 5]])
