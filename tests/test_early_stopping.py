"""Early stopping's copy of the best weights: in memory when small, in a file past `spill_bytes` (a model with
10^7 embedding rows must not hold a second copy of its table in memory)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from msrec.train.early_stopping import EarlyStopping


@pytest.mark.parametrize("spill_bytes", [0, 10**9], ids=["spilled", "in-memory"])
def test_early_stopping_keeps_the_best_weights_and_counts_patience(spill_bytes):
    model = nn.Linear(2, 1)
    stopper = EarlyStopping(patience=2, spill_bytes=spill_bytes)
    scores = torch.zeros(3, 1)
    assert not stopper.update(1, -math.inf, scores, model)  # undefined: not an improvement, but kept
    assert stopper.epoch == 1 and not stopper.stop
    assert stopper.update(2, 0.6, scores, model)
    kept = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)  # the kept weights are a copy, not the live parameters
    assert not stopper.update(3, 0.6, scores, model) and not stopper.stop  # equal is not better
    assert not stopper.update(4, 0.5, scores, model) and stopper.stop
    stopper.restore(model)
    assert torch.equal(model.weight, kept) and stopper.epoch == 2 and stopper.score == 0.6


def test_large_best_weights_live_in_a_file_not_in_memory():
    model = nn.Embedding(1000, 16)
    stopper = EarlyStopping(patience=1, spill_bytes=16 * 1000 * 4 - 1)  # the table is one byte too large
    stopper.update(1, 0.5, torch.zeros(1, 1), model)
    assert stopper.spilled and not any(isinstance(v, torch.Tensor) for v in stopper.state.values())
    folder = Path(stopper._folder)
    assert [p.name for p in folder.iterdir()] == ["best.safetensors"]  # no half-written file left beside it
    kept = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    checkpointed = stopper.state_dict()  # what a checkpoint stores: the weights themselves, read back
    assert torch.equal(checkpointed["state"]["weight"], kept)
    stopper.restore(model)
    assert torch.equal(model.weight, kept)

    resumed = EarlyStopping(patience=1, spill_bytes=stopper.spill_bytes)
    resumed.load_state_dict(checkpointed, torch.device("cpu"))
    assert resumed.spilled and torch.equal(resumed.weights()["weight"], kept)
    stopper.close()
    assert not folder.exists()
