"""`model.table_dtype: bfloat16`: the embedding table stored in 16 bits, updated in fp32 and rounded stochastically."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

import msrec
from msrec.errors import MsrecError
from msrec.runs import load_run
from msrec.serve.export import ExportedModel, export_run
from msrec.train.optim import RowwiseAdagrad, round_stochastically

TINY = {"data": {"dataset": "synthetic", "options": {"rows": 2000}},
        "train": {"epochs": 1, "batch_size": 256, "progress": False, "seed": 3}}


def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour():
    x = torch.linspace(0.01, 0.05, 1000)
    draws = torch.stack([round_stochastically(x) for _ in range(400)]).float()
    low, high = x.to(torch.bfloat16).float(), x.to(torch.bfloat16).float()
    up = torch.nextafter(x.to(torch.bfloat16), torch.tensor(1.0, dtype=torch.bfloat16)).float()
    down = torch.nextafter(x.to(torch.bfloat16), torch.tensor(-1.0, dtype=torch.bfloat16)).float()
    low, high = torch.where(low > x, down, low), torch.where(high < x, up, high)
    assert ((draws == low) | (draws == high)).all()
    step = (high - low).clamp(min=1e-12)
    nearest_bias = (x.to(torch.bfloat16).float() - x).abs().mean() / step.mean()
    mean_bias = (draws.mean(0) - x).abs().mean() / step.mean()
    assert mean_bias < 0.06 < nearest_bias  # 400 draws: the mean is within a few hundredths of a step


def test_updates_below_half_a_bf16_step_still_move_the_table():
    """The reason for stochastic rounding: rounding to nearest would drop every one of these updates."""
    weight = torch.nn.Parameter(torch.ones(64, 4, dtype=torch.bfloat16))
    opt = RowwiseAdagrad([weight], lr=1e-4)  # each step moves a row by ~1e-4, a bf16 step at 1.0 is 2^-7
    for _ in range(200):
        weight.grad = torch.ones_like(weight)
        opt.step()
    moved = 1.0 - weight.float().mean().item()
    expected = sum(1e-4 / (k ** 0.5) for k in range(1, 201))  # Adagrad's steps shrink as 1/sqrt(k)
    assert weight.dtype == torch.bfloat16
    assert abs(moved - expected) < 0.35 * expected


def _steps(weight: torch.nn.Parameter, opt: RowwiseAdagrad, n: int, draw_between: bool = False,
           grads: torch.Generator | None = None) -> None:
    grads = grads or torch.Generator().manual_seed(7)
    for _ in range(n):
        rows = torch.randint(0, weight.shape[0], (16,), generator=grads).unique()
        weight.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), torch.randn(len(rows), 4, generator=grads),
                                              weight.shape).to(torch.bfloat16)
        opt.step()
        if draw_between:  # e.g. dropout on a batch of another size on this rank
            torch.rand(1000)


def test_rounding_draws_do_not_depend_on_other_random_numbers():
    """DDP ranks must round alike (their tables stay replicas) though their dropout draws differ."""
    tables = []
    for draw_between in (False, True):
        torch.manual_seed(5)
        weight = torch.nn.Parameter(torch.randn(50, 4).to(torch.bfloat16))
        _steps(weight, RowwiseAdagrad([weight], lr=0.01), 30, draw_between)
        tables.append(weight.detach().clone())
    assert torch.equal(tables[0], tables[1])


def test_a_resumed_optimizer_continues_exactly(tmp_path):
    torch.manual_seed(5)
    weight = torch.nn.Parameter(torch.randn(50, 4).to(torch.bfloat16))
    opt = RowwiseAdagrad([weight], lr=0.01)
    grads = torch.Generator().manual_seed(7)
    _steps(weight, opt, 10, grads=grads)
    torch.save({"weight": weight.detach().clone(), "opt": opt.state_dict(), "grads": grads.get_state()},
               tmp_path / "state.pt")
    _steps(weight, opt, 10, grads=grads)
    saved = torch.load(tmp_path / "state.pt")
    resumed = torch.nn.Parameter(saved["weight"])
    opt2 = RowwiseAdagrad([resumed], lr=0.01)
    opt2.load_state_dict(saved["opt"])
    assert opt2.state[resumed]["sum"].dtype == torch.float32  # not cast to the table's bf16 on loading
    grads.set_state(saved["grads"])
    _steps(resumed, opt2, 10, grads=grads)
    assert torch.equal(resumed, weight)


def test_a_bf16_run_stores_trains_saves_loads_and_exports(tmp_path):
    cfg = {**TINY, "model": {"name": "star", "table_dtype": "bfloat16"}}
    result = msrec.train(cfg, out=tmp_path / "run", console=None)
    assert result.model.embedding.table.weight.dtype == torch.bfloat16
    tensors = safetensors.torch.load_file(tmp_path / "run" / "model.safetensors")
    assert tensors["embedding.table.weight"].dtype == torch.bfloat16
    assert all(t.dtype != torch.bfloat16 for k, t in tensors.items() if k != "embedding.table.weight")
    run = load_run(tmp_path / "run")
    assert run.model.embedding.table.weight.dtype == torch.bfloat16
    assert torch.equal(run.model.embedding.table.weight, result.model.embedding.table.weight)
    again = msrec.evaluate(tmp_path / "run")
    assert again["macro_auc"] == pytest.approx(result.metrics["test"]["macro_auc"], abs=1e-12)
    from msrec.serve.export import example_batch
    batch = example_batch(run.encoder.spec(), rows_per_scenario=5)
    with torch.no_grad():
        eager = torch.sigmoid(run.model.eval()(batch))
    for fmt in ("pt", "onnx"):
        exported = ExportedModel(export_run(tmp_path / "run", None, tmp_path / f"model.{fmt}"))
        assert torch.allclose(exported.predict(batch), eager, atol=1e-5)


def test_bf16_needs_the_rowwise_adagrad_table_optimizer():
    cfg = {**TINY, "model": {"name": "dnn", "table_dtype": "bfloat16"},
           "train": {**TINY["train"], "embedding_optimizer": {"name": "adam"}}}
    with pytest.raises(MsrecError, match="table_dtype bfloat16 needs train.embedding_optimizer rowwise_adagrad"):
        msrec.train(cfg, save=False, console=None)


def test_an_unknown_table_dtype_is_refused_naming_the_key():
    with pytest.raises(MsrecError, match="model.table_dtype"):
        msrec.train({**TINY, "model": {"name": "dnn", "table_dtype": "float16"}}, save=False, console=None)
