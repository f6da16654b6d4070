"""Trainer edge cases that the end-to-end runs do not reach."""

from __future__ import annotations

import io

import torch
from rich.console import Console

from msrec.config import TrainConfig
from msrec.data.table import TensorTable
from msrec.models import build_model
from msrec.schema import FeatureSpec
from msrec.train.predict import Scorer
from msrec.train.trainer import Trainer


def _table(n: int, labels: torch.Tensor, seed: int) -> TensorTable:
    g = torch.Generator().manual_seed(seed)
    return TensorTable(sparse=torch.randint(1, 20, (n, 2), generator=g), dense=torch.randn(n, 1, generator=g),
                       scenario=torch.randint(0, 2, (n,), generator=g), labels=labels)


def test_an_undefined_validation_auc_warns_and_keeps_the_first_epoch():
    """Validation rows of one class: macro AUC is NaN; the run says so instead of silently freezing epoch 1."""
    spec = FeatureSpec(sparse_fields=["a", "b"], sparse_vocab=[20, 20], list_fields=[], list_vocab=[], dense_dim=1,
                       scenario_fields=[], scenarios=["s0", "s1"], tasks=["click"])
    train = _table(512, torch.randint(0, 2, (512, 1), generator=torch.Generator().manual_seed(1)).float(), 2)
    val = _table(64, torch.zeros(64, 1), 3)
    out = io.StringIO()
    trainer = Trainer(build_model("dnn", spec, {"hidden": [8]}), TrainConfig(epochs=2, batch_size=128, patience=5),
                      spec.scenarios, spec.tasks, Console(file=out, width=200))
    fit = trainer.fit(train, val)
    assert "validation macro_auc is undefined (NaN)" in out.getvalue()
    assert "train.monitor: logloss" in out.getvalue()
    assert fit.epochs == 2 and fit.best_epoch == 1


def _spec(tasks: list[str]) -> FeatureSpec:
    return FeatureSpec(sparse_fields=["a", "b"], sparse_vocab=[20, 20], list_fields=[], list_vocab=[], dense_dim=1,
                       scenario_fields=[], scenarios=["s0", "s1"], tasks=tasks)


def _labels(n: int, tasks: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 2, (n, tasks), generator=torch.Generator().manual_seed(seed)).float()


def test_the_kept_validation_report_is_the_restored_models_report():
    """The best epoch's validation scores are kept rather than scored again: they are the scores of the
    weights the model ends with, and the run's val block is their full report."""
    spec = _spec(["click", "buy"])
    train, val = _table(1024, _labels(1024, 2, 1), 2), _table(256, _labels(256, 2, 3), 4)
    val.user = torch.randint(0, 30, (256,), generator=torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    trainer = Trainer(build_model("dnn", spec, {"mlp": {"hidden": [8]}}),
                      TrainConfig(epochs=4, batch_size=128, patience=1, lr=0.05, progress=False),
                      spec.scenarios, spec.tasks)
    fit = trainer.fit(train, val)
    assert torch.equal(fit.best_scores, trainer.predict(val))
    assert fit.best_val == Scorer(trainer.model, spec.scenarios, spec.tasks).evaluate(val)
    assert set(fit.best_val["tasks"]) == {"click", "buy"} and "gauc" in fit.best_val["tasks"]["buy"]["overall"]
    best = fit.history[fit.best_epoch - 1]
    assert best["val_macro_auc"] == fit.best_val["macro_auc"] and best["val_auc"] == fit.best_val["overall"]["auc"]

