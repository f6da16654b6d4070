"""Trainer edge cases that the end-to-end runs do not reach."""

from __future__ import annotations

import io

import torch
from rich.console import Console

from msrec.config import TrainConfig
from msrec.data.table import TensorTable
from msrec.models import build_model
from msrec.schema import FeatureSpec
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
