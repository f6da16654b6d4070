"""Hand-built feature specs and batches for the model property tests, and the shared "it learns" check."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

import msrec
from msrec.api import EncodedData, as_config, prepare_data
from msrec.config import Config
from msrec.data.table import Batch
from msrec.models.registry import build_model
from msrec.nn.meta import WeightGenerator
from msrec.schema import FeatureSpec
from msrec.train.trainer import Trainer

SCENARIO_FIELD = 3  # index of the scenario-indicator field in `make_spec`


def make_spec(tasks: int = 1, scenarios: int = 3) -> FeatureSpec:
    return FeatureSpec(sparse_fields=["user", "item", "category", "scenario"], sparse_vocab=[50, 40, 6, scenarios + 1],
                       list_fields=[], list_vocab=[], dense_dim=2, scenario_fields=[SCENARIO_FIELD],
                       scenarios=[f"s{i}" for i in range(scenarios)], tasks=[f"t{i}" for i in range(tasks)])


def make_batch(spec: FeatureSpec, scenario: list[int] | torch.Tensor, seed: int = 0) -> Batch:
    """Random rows of the given scenarios (in that row order); the indicator field agrees with them."""
    g = torch.Generator().manual_seed(seed)
    scenario = torch.as_tensor(scenario, dtype=torch.long)
    n = len(scenario)
    sparse = torch.stack([torch.randint(1, v, (n,), generator=g) for v in spec.sparse_vocab], 1)
    sparse[:, SCENARIO_FIELD] = scenario + 1
    return Batch(sparse=sparse, dense=torch.randn(n, spec.dense_dim, generator=g), scenario=scenario,
                 labels=torch.randint(0, 2, (n, spec.num_tasks), generator=g).float())


def with_scenario(batch: Batch, s: int) -> Batch:
    """The same rows, moved to scenario `s` (indicator field included)."""
    sparse = batch.sparse.clone()
    sparse[:, SCENARIO_FIELD] = s + 1
    return Batch(sparse=sparse, dense=batch.dense, scenario=torch.full_like(batch.scenario, s), labels=batch.labels)


def strong_condition(model: nn.Module) -> None:
    """Weights set so that the scenario matters at full strength, for tests of scenario-dependence: embeddings
    at unit scale (their 0.01 initialisation makes every scenario's indicator embedding nearly zero) and each
    weight generator's scenario-dependent part as large as its shared part (it starts at a tenth). At
    initialisation those tests pass by about 1e-4; with these weights by 0.1 or more."""
    with torch.no_grad():
        for p in model.embedding.parameters():
            p.normal_()
        for module in model.modules():
            if isinstance(module, WeightGenerator):
                module.head.weight.normal_()


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    """`|a - b|` over the mean of `|a|` and `|b|` (0: equal; ~1.4: unrelated vectors of one size)."""
    a, b = a.detach(), b.detach()
    return float(2 * (a - b).norm() / (a.norm() + b.norm()))


def bce(model: nn.Module, batch: Batch) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)


def grad_norm(module: nn.Module, scenario: int | None = None) -> float:
    """Total absolute gradient of a module's parameters (0 when none reached them); with `scenario`, of that
    scenario's slice of stacked per-scenario parameters (`[S, ...]`) only."""
    grads = [p.grad if scenario is None else p.grad[scenario] for p in module.parameters() if p.grad is not None]
    return sum(float(g.abs().sum()) for g in grads)


def _config(name: str, options: dict | None, epochs: int, tasks: int) -> Config:
    return as_config({"data": {"dataset": "synthetic", "options": {"rows": 20000, "tasks": tasks}},
                      "model": {"name": name, **(options or {})},
                      "train": {"epochs": epochs, "batch_size": 512, "lr": 3e-3, "progress": False, "patience": 10}})


@functools.cache
def _synthetic(tasks: int) -> EncodedData:
    """Encoded once per test session (the data does not depend on the model)."""
    return prepare_data(_config("dnn", None, 1, tasks))


def learns(name: str, options: dict | None = None, epochs: int = 3, tasks: int = 1) -> tuple[float, float]:
    """Test macro AUC of the untrained model and after a short training on small synthetic data."""
    cfg = _config(name, options, epochs, tasks)
    data = _synthetic(tasks)
    spec = data.encoder.spec()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: one thread is fastest, and other tests may share the cores
    try:
        torch.manual_seed(cfg.train.seed)
        untrained = build_model(name, spec, cfg.model.options())
        before = Trainer(untrained, cfg.train, spec.scenarios, spec.tasks).evaluate(data.test)
        after = msrec.train(cfg, save=False, data=data).metrics["test"]
    finally:
        torch.set_num_threads(threads)
    return before["macro_auc"], after["macro_auc"]  # with several tasks: the mean over tasks


def assert_one_head_per_task(model: nn.Module, spec: FeatureSpec, head: Callable[[], nn.Linear | nn.Parameter],
                             scenario: int | None = None) -> None:
    """With two tasks the output is `[B, 2]`, and task t's loss reaches row t of the output layer `head()`
    and not the other task's row (`head()` a stacked per-scenario weight `[S, out, in]`: `scenario`'s)."""
    batch = make_batch(spec, [0, 1, 2, 1, 0])
    assert model(batch).shape == (5, 2)
    for t in range(2):
        model.zero_grad()
        model(batch)[:, t].sum().backward()
        out = head()
        grad = out.grad[scenario] if isinstance(out, nn.Parameter) else out.weight.grad
        assert float(grad[t].abs().sum()) > 0 and float(grad[1 - t].abs().sum()) == 0
