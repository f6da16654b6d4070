"""Scoring with a model, without training it: probabilities in row order and the metrics of a labelled table.

The trainer validates with a `Scorer`; `api.evaluate` / `predict` / `score_table` (and `msrec serve`) use
one on a loaded run, so scoring needs no optimizer, no training config and no run directory. Under torchrun
each rank scores a contiguous shard of the rows and the scores are gathered (see `train/distributed.py`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from msrec.data.table import TensorTable
from msrec.errors import MsrecError
from msrec.schema import ScenarioLevels
from msrec.train import distributed as D
from msrec.train.metrics import evaluation_report


def autocast(device: torch.device, precision: str):
    """bf16 autocast of forward passes when `train.precision: bf16` (losses and metrics stay fp32)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


class Scorer:
    """Scores encoded tables with `model` (its bare module: no DDP, no collectives inside a forward)."""

    def __init__(self, model: nn.Module, scenario_names: list[str], tasks: list[str], batch_size: int = 65536,
                 precision: str = "fp32", session: D.Session = D.LOCAL, levels: ScenarioLevels | None = None):
        self.model = model
        self.scenario_names = scenario_names
        self.levels = levels  # a hierarchical scenario's levels: the reports add per-level metrics
        self.tasks = tasks
        self.batch_size = batch_size
        self.precision = precision
        self.session = session

    @torch.no_grad()
    def predict(self, table: TensorTable, steps: int | None = None) -> Tensor:
        """Probabilities `[N, T]` in row order, on the CPU (this process's rows only); with `steps`, in exactly
        that many forward passes (the rows split evenly, some may be empty)."""
        self.model.eval()
        device = self.session.device
        if steps is None:
            batches = table.batches(self.batch_size)
        else:
            ends = [0, *itertools.accumulate(len(r) for r in torch.arange(len(table)).tensor_split(steps))]
            batches = (table.batch(slice(a, b)) for a, b in itertools.pairwise(ends))
        with autocast(device, self.precision):
            outs = [torch.sigmoid(self.model(b.to(device)).float()).cpu() for b in batches]
        return torch.cat(outs) if outs else torch.zeros(0, len(self.tasks))

    def scores(self, table: TensorTable) -> Tensor:
        """Every row's probabilities on every rank: distributed, each rank scores a contiguous shard with rank
        0's buffers (BatchNorm statistics) and the shards are gathered."""
        if not self.session.enabled:
            return self.predict(table)
        D.broadcast_buffers(self.model)
        shards = torch.arange(len(table)).tensor_split(self.session.info.world_size)
        # The same number of forward passes on every rank: a sharded embedding lookup is a collective.
        steps = max(1, math.ceil(len(shards[0]) / self.batch_size))
        local = self.predict(table.subset(shards[self.session.info.rank]), steps)
        return D.gather_rows(local, [len(s) for s in shards], self.session.device)

    def report(self, table: TensorTable, scores: Tensor, metrics: Callable[..., dict] = evaluation_report) -> dict:
        """`metrics` of a labelled table's scores: computed once (rank 0) and the same on every rank, so that
        every rank takes the same early-stopping decision."""
        if table.labels is None:
            raise MsrecError("evaluation needs the label columns")
        return self.session.on_main(lambda: metrics(table.labels, scores, table.scenario, self.scenario_names,
                                                    self.tasks, table.user, table.truth, self.levels))

    def scored_report(self, table: TensorTable) -> tuple[dict, Tensor]:
        """The metrics report of a labelled table (the `metrics.json` split block) and its scores `[N, T]`."""
        scores = self.scores(table)
        return self.report(table, scores), scores

    def evaluate(self, table: TensorTable) -> dict:
        return self.scored_report(table)[0]
