"""Fit / evaluate / predict for any registry model. Nothing model-specific lives here.

- loss: binary cross-entropy per task on the logits `[B, T]`, summed with per-task weights;
- Adam or AdamW, optional cosine or step schedule with linear warm-up;
- early stopping on a validation metric (default: mean of the per-scenario AUCs); the best weights are
  restored at the end whether patience or the epochs ran out;
- the step itself has no host sync: the running loss is read only when the progress bar refreshes;
- distributed (launched by torchrun, see msrec.train.distributed): the model is wrapped in DDP, each rank
  trains on its share of every global batch, evaluation gathers every rank's scores, rank 0 alone prints.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from msrec.config import TrainConfig
from msrec.data.table import BatchSource, TensorTable
from msrec.errors import MsrecError
from msrec.train import distributed as D
from msrec.train.metrics import evaluation_report, monitor_value

PROGRESS_EVERY = 20  # batches between progress-bar refreshes (each one reads the loss: one host sync)


@dataclass
class FitResult:
    epochs: int
    best_epoch: int
    seconds: float
    samples_per_second: float
    best_val: dict
    history: list[dict] = field(default_factory=list)


def _fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


class Trainer:
    def __init__(self, model: nn.Module, cfg: TrainConfig, scenario_names: list[str], tasks: list[str],
                 console: Console | None = None, device: str | torch.device = "cpu", dist: D.DistInfo = D.SINGLE):
        self.model = model.to(device)
        self.cfg = cfg
        self.scenario_names = scenario_names
        self.tasks = tasks
        self.device = torch.device(device)
        self.dist = dist
        self.console = console or Console(stderr=True, quiet=not cfg.progress)
        if not dist.is_main:  # rank 0 alone prints
            self.console = Console(stderr=True, quiet=True)
        # Training steps go through DDP (gradient averaging); evaluation uses the bare model (no collectives).
        # find_unused_parameters: per-scenario modules get no gradient on a rank whose share lacks the scenario.
        self.train_model = self.model if not dist.enabled else nn.parallel.DistributedDataParallel(
            self.model, find_unused_parameters=True)
        weights = cfg.task_weights or [1.0] * len(tasks)
        if len(weights) != len(tasks):
            raise MsrecError(f"train.task_weights: {len(weights)} weights for {len(tasks)} tasks {tasks}")
        self.task_weights = torch.tensor(weights, dtype=torch.float32, device=self.device)

    # ------------------------------------------------------------------ training
    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        per_task = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0)
        return (per_task * self.task_weights).sum()

    def _optimizer(self) -> torch.optim.Optimizer:
        cls = torch.optim.AdamW if self.cfg.optimizer == "adamw" else torch.optim.Adam
        return cls(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def _autocast(self):
        """bf16 autocast of the forward pass when `train.precision: bf16` (the loss is taken in fp32)."""
        if self.cfg.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _source(self, train: BatchSource) -> tuple[BatchSource, int]:
        """This rank's part of the training rows and the steps per epoch every rank takes."""
        if not self.dist.enabled:
            return train, train.steps(self.cfg.batch_size)
        source = train.shard(self.dist.rank, self.dist.world_size)
        steps = D.all_reduce_min(source.steps(self.cfg.batch_size), self.device)  # the same on every rank
        if steps == 0:
            raise MsrecError(f"train: a rank has no training rows ({len(train):,} rows for {self.dist.world_size} "
                             "ranks); use fewer ranks (streaming: more, smaller row groups)")
        return source, steps

    def _scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
        cfg = self.cfg
        warmup = cfg.warmup_epochs * steps_per_epoch
        total = cfg.epochs * steps_per_epoch

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if cfg.scheduler == "cosine":
                return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
            if cfg.scheduler == "step":
                return cfg.step_gamma ** (step // steps_per_epoch)
            return 1.0

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def fit(self, train: BatchSource, val: TensorTable) -> FitResult:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        generator = torch.Generator().manual_seed(cfg.seed)
        optimizer = self._optimizer()
        source, steps_per_epoch = self._source(train)
        scheduler = self._scheduler(optimizer, steps_per_epoch)
        best_score, best_epoch, best_state, best_val = -math.inf, 0, None, {}
        history: list[dict] = []
        train_seconds, train_samples, stale = 0.0, 0, 0
        nan_warned = False
        started = time.perf_counter()
        epoch = 0
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("loss {task.fields[loss]}"),
                      TextColumn("{task.fields[speed]} samples/s"), TimeRemainingColumn(),
                      console=self.console, transient=True, disable=not cfg.progress or not self.dist.is_main) \
                as progress:
            for epoch in range(1, cfg.epochs + 1):
                bar = progress.add_task(f"epoch {epoch}/{cfg.epochs}", total=steps_per_epoch, loss="-", speed="-")
                self.model.train()
                loss_sum = torch.zeros((), device=self.device)
                t0 = time.perf_counter()
                seen = 0
                batches = source.batches(self.cfg.batch_size, shuffle=True, generator=generator)
                for step, batch in enumerate(itertools.islice(batches, steps_per_epoch), 1):
                    batch = batch.to(self.device)
                    with self._autocast():
                        logits = self.train_model(batch)
                    loss = self.loss(logits.float(), batch.labels)
                    if batch.loss_scale is not None:
                        loss = loss * batch.loss_scale
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    loss_sum += loss.detach()
                    seen += len(batch)
                    if step % PROGRESS_EVERY == 0 or step == steps_per_epoch:
                        progress.update(bar, completed=step, loss=f"{loss_sum.item() / step:.4f}",
                                        speed=f"{seen * self.dist.world_size / (time.perf_counter() - t0):,.0f}")
                batches.close()  # stops a stream's reader thread when this rank has batches left
                if self.dist.enabled:  # the epoch's loss and rows over all ranks (one all-reduce per epoch)
                    totals = D.all_reduce_sum(torch.stack([loss_sum.double(), torch.tensor(
                        float(seen), dtype=torch.float64, device=self.device)]))
                    loss_sum, seen = totals[0] / self.dist.world_size, int(totals[1].item())
                epoch_seconds = time.perf_counter() - t0
                train_seconds += epoch_seconds
                train_samples += seen
                progress.remove_task(bar)
                train_loss = loss_sum.item() / steps_per_epoch
                if not math.isfinite(train_loss):
                    raise MsrecError(f"training diverged at epoch {epoch} (loss {train_loss}); "
                                     "lower train.lr or check the dense features' scale")
                val_report = self.evaluate(val)
                score = monitor_value(val_report, cfg.monitor)
                if math.isnan(score):  # e.g. every validation scenario holds one class: no AUC to compare
                    if not nan_warned:
                        self.console.print(f"warning: validation {cfg.monitor} is undefined (NaN), so epochs cannot "
                                           "be compared; set train.monitor: logloss", highlight=False, soft_wrap=True)
                        nan_warned = True
                    score = -math.inf  # any later epoch with a defined score is better
                history.append({"epoch": epoch, "train_loss": train_loss, "val_macro_auc": val_report["macro_auc"],
                                "val_auc": val_report["overall"]["auc"],
                                "val_logloss": val_report["overall"]["logloss"],
                                "samples_per_second": seen / epoch_seconds})
                improved = score > best_score
                self.console.print(
                    f"epoch {epoch}/{cfg.epochs}  loss {train_loss:.4f}  val macro_auc "
                    f"{_fmt(val_report['macro_auc'])}  auc {_fmt(val_report['overall']['auc'])}  logloss "
                    f"{_fmt(val_report['overall']['logloss'])}  {seen / epoch_seconds:,.0f} samples/s"
                    f"{'  *' if improved else ''}", highlight=False, soft_wrap=True)
                if improved or best_state is None:
                    best_score, best_epoch, best_val, stale = score, epoch, val_report, 0
                    best_state = copy.deepcopy(self.model.state_dict())
                else:
                    stale += 1
                    if stale >= cfg.patience:
                        self.console.print(f"early stop: no improvement for {cfg.patience} epochs", highlight=False, soft_wrap=True)
                        break
        self.model.load_state_dict(best_state)  # also when the epochs ran out
        return FitResult(epochs=epoch, best_epoch=best_epoch, seconds=time.perf_counter() - started,
                         samples_per_second=train_samples / max(train_seconds, 1e-9), best_val=best_val,
                         history=history)

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(self, table: TensorTable) -> Tensor:
        """Probabilities `[N, T]` in row order."""
        self.model.eval()
        with self._autocast():
            outs = [torch.sigmoid(self.model(b.to(self.device)).float()).cpu()
                    for b in table.batches(self.cfg.eval_batch_size)]
        return torch.cat(outs) if outs else torch.zeros(0, len(self.tasks))

    def evaluate(self, table: TensorTable) -> dict:
        """Metrics of the whole table (see `scored_report`)."""
        return self.scored_report(table)[0]

    def scored_report(self, table: TensorTable) -> tuple[dict, Tensor]:
        """Metrics of the whole table and its scores `[N, T]` in row order. Distributed: each rank scores a
        contiguous shard, the scores are gathered, rank 0 computes the report and every rank gets that same
        report (so that every rank takes the same early-stopping decision)."""
        if table.labels is None:
            raise MsrecError("evaluation needs the label columns")
        if not self.dist.enabled:
            scores = self.predict(table)
            return evaluation_report(table.labels, scores, table.scenario, self.scenario_names, self.tasks,
                                     table.user, table.truth), scores
        D.broadcast_buffers(self.model)
        shards = torch.arange(len(table)).tensor_split(self.dist.world_size)
        local = self.predict(table.subset(shards[self.dist.rank]))
        scores = D.gather_rows(local, [len(s) for s in shards], self.device).cpu()
        report = None
        if self.dist.is_main:
            report = evaluation_report(table.labels, scores, table.scenario, self.scenario_names, self.tasks,
                                       table.user, table.truth)
        return D.broadcast_object(report, self.dist), scores
