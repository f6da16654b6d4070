"""Row-sparse embedding updates (`train.embedding_optimizer`, msrec.train.optim): a step reads and writes the
weights and the optimizer state of the rows its batch used, and of no other row; `dense` is the 0.1 path; the
combined optimizer has the Optimizer API (scheduler, state_dict round trip); the tables stay plain weights."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from msrec.config import TrainConfig
from msrec.models.registry import build_model
from msrec.train.optim import (
    CombinedOptimizer,
    RowwiseAdagrad,
    build_optimizer,
    embedding_mode,
    fallback_note,
    table_lr,
)
from tests.models.zoo_batch import bce, make_batch, make_spec

SPARSE = ["rowwise_adagrad", "adam", "sgd"]


def model_and_optimizer(name: str, model: str = "dnn", **train):
    torch.manual_seed(0)
    spec = make_spec()
    net = build_model(model, spec, {"embed_dim": 4, "mlp": {"hidden": [8], "dropout": 0.0}})
    cfg = TrainConfig(embedding_optimizer={"name": name}, weight_decay=0.1, lr=0.01, **train)
    return spec, net, build_optimizer(net, cfg)


def step(net, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    bce(net, batch).backward()
    optimizer.step()


def table_state(optimizer, table: torch.Tensor) -> list[torch.Tensor]:
    """The optimizer's per-row state tensors of `table` (those with a row dimension)."""
    return [v.clone() for v in optimizer.state.get(table, {}).values()
            if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == table.shape[0]]


def batch_rows(net, batch) -> torch.Tensor:
    """The table rows a batch looks up."""
    emb = net.embedding
    return (batch.sparse.long() + emb.offsets[: emb.num_sparse]).unique()


@pytest.mark.parametrize("name", SPARSE)
def test_a_step_leaves_unused_rows_weights_and_state_untouched(name):
    spec, net, optimizer = model_and_optimizer(name)
    table = net.embedding.table.weight
    first, second = make_batch(spec, [0, 1, 2] * 4, seed=1), make_batch(spec, [0, 1, 2] * 4, seed=2)
    step(net, optimizer, first)
    weights, state = table.detach().clone(), table_state(optimizer, table)
    step(net, optimizer, second)
    used = torch.zeros(len(table), dtype=torch.bool)
    used[batch_rows(net, second)] = True
    assert torch.equal(table[~used], weights[~used])  # no momentum, no weight decay on a row the step did not use
    assert not torch.equal(table[used], weights[used])
    for before, after in zip(state, table_state(optimizer, table), strict=True):
        assert torch.equal(after[~used], before[~used])
    assert table.grad is None or table.grad.is_sparse or name == "dense"


def test_dense_is_the_previous_path():
    """`dense`: one Adam over every parameter, as before; a step moves rows its batch did not use (momentum)."""
    spec, net, optimizer = model_and_optimizer("dense")
    assert type(optimizer) is torch.optim.Adam and not net.embedding.table.sparse
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in net.parameters()]
    table = net.embedding.table.weight
    step(net, optimizer, make_batch(spec, [0, 1, 2] * 4, seed=1))
    weights = table.detach().clone()
    second = make_batch(spec, [0, 1, 2] * 4, seed=2)
    step(net, optimizer, second)
    unused = torch.ones(len(table), dtype=torch.bool)
    unused[batch_rows(net, second)] = False
    assert not torch.equal(table[unused], weights[unused])


def test_rowwise_adagrad_keeps_one_value_per_row():
    _, net, optimizer = model_and_optimizer("rowwise_adagrad")
    step(net, optimizer, make_batch(make_spec(), [0, 1, 2], seed=1))
    table = net.embedding.table.weight
    assert [tuple(v.shape) for v in optimizer.state[table].values()] == [(len(table),)]


def test_rowwise_adagrad_matches_its_formula():
    w = nn.Parameter(torch.randn(5, 3))
    opt = RowwiseAdagrad([w], lr=0.1, eps=1e-8)
    start = w.detach().clone()
    grad = torch.sparse_coo_tensor(torch.tensor([[1, 3, 1]]), torch.tensor([[1.0, 2, 3], [0, 0, 4], [1, 0, 0]]), (5, 3))
    w.grad = grad
    opt.step()
    g = grad.to_dense()
    acc = g.pow(2).mean(1)
    expected = start - 0.1 * g / (acc.sqrt() + 1e-8).unsqueeze(1)
    assert torch.allclose(w, torch.where(g.abs().sum(1, keepdim=True) > 0, expected, start))
    assert torch.allclose(opt.state[w]["sum"], acc)


def test_the_combined_optimizer_round_trips_its_state():
    spec, net, optimizer = model_and_optimizer("rowwise_adagrad")
    assert isinstance(optimizer, CombinedOptimizer) and set(optimizer.state_dict()) == {"dense", "embeddings"}
    batch = make_batch(spec, [0, 1, 2] * 4, seed=1)
    step(net, optimizer, batch)
    saved_model = {k: v.clone() for k, v in net.state_dict().items()}
    saved = copy.deepcopy(optimizer.state_dict())  # as written to a checkpoint (the live state changes in place)
    step(net, optimizer, batch)
    after = {k: v.clone() for k, v in net.state_dict().items()}
    _, again, fresh = model_and_optimizer("rowwise_adagrad")
    again.load_state_dict(saved_model)
    fresh.load_state_dict(saved)
    step(again, fresh, batch)
    for k, v in again.state_dict().items():
        assert torch.allclose(v, after[k]), k
    with pytest.raises(ValueError, match="expected"):
        fresh.load_state_dict({"dense": saved["dense"]})


def test_a_scheduler_sets_the_tables_learning_rate_too():
    _, _, optimizer = model_and_optimizer("adam")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5)
    assert [g["lr"] for g in optimizer.param_groups] == [0.005, 0.005]
    assert [g["lr"] for g in optimizer.parts["embeddings"].param_groups] == [0.005]
    scheduler.step()


def test_the_tables_default_learning_rate():
    assert table_lr(TrainConfig(lr=0.002)) == pytest.approx(0.02)  # rowwise_adagrad: 10 x train.lr
    assert table_lr(TrainConfig(lr=0.002, embedding_optimizer={"name": "adam"})) == 0.002
    assert table_lr(TrainConfig(lr=0.002, embedding_optimizer={"name": "sgd", "lr": 0.5})) == 0.5


def test_ddp_on_gpus_falls_back_to_dense_tables_and_says_so():
    cfg = TrainConfig()
    assert embedding_mode(cfg, True, torch.device("cpu")) == "rowwise_adagrad"  # gloo all-reduces sparse grads
    assert embedding_mode(cfg, False, torch.device("cuda")) == "rowwise_adagrad"
    assert embedding_mode(cfg, True, torch.device("cuda")) == "dense"
    assert "NCCL" in fallback_note(cfg, True, torch.device("cuda")) and fallback_note(cfg, True, torch.device("cpu")) \
        is None


@pytest.mark.parametrize("model", ["star", "pepnet", "m2m"])
def test_every_table_of_a_model_is_row_sparse_and_its_weights_stay_plain(model):
    """Models with tables of their own (a gate's SubsetEmbedding) train every table row-sparse; the state_dict
    (what model.safetensors and export read) holds plain dense weights."""
    spec, net, optimizer = model_and_optimizer("rowwise_adagrad", model)
    tables = [m for m in net.modules() if isinstance(m, nn.Embedding)]
    assert tables and all(t.sparse for t in tables)
    assert {id(t.weight) for t in tables} == {id(p) for p in optimizer.parts["embeddings"].param_groups[0]["params"]}
    step(net, optimizer, make_batch(spec, [0, 1, 2] * 4, seed=1))
    assert all(not v.is_sparse for v in net.state_dict().values())


def test_the_vocabulary_benchmark_runs(tmp_path):
    """benchmarks/vocab.py at tiny sizes: a row per id count with its numbers (the figures are BENCHMARKS.md's)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "vocab.py"
    proc = subprocess.run([sys.executable, str(script), "--ids", "100", "1000", "--rows", "3000", "--models", "dnn",
                           "--modes", "default", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for ids in ("100", "1,000"):
        assert re.search(rf"^dnn\s+default\s+{ids}\s+[\d.]+\s+[\d,]+\s+\d+\.\d\d\s+[\d,]+\s+\d+\.\d\d\s+[\d,]+\s+(-|-?\d+\.\d\d)$",
                         proc.stdout, re.MULTILINE), proc.stdout
