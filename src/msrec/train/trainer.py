"""Fit any registry model: the epoch loop, validation and early stopping. Nothing model-specific lives here.

- loss: binary cross-entropy per task on the logits `[B, T]`, summed with per-task weights, plus the model's
  auxiliary loss for the step when it defines one (`aux_loss()`, see `Trainer.aux_loss`);
- Adam or AdamW, the embedding tables row-sparse (msrec.train.optim), optional cosine or step schedule
  with linear warm-up;
- early stopping on a validation metric (default: mean of the per-scenario AUCs); the best weights are
  restored at the end whether patience or the epochs ran out;
- the step itself has no host sync: the running loss is read only when the progress bar refreshes;
- distributed (a `Session` of torchrun's ranks, see msrec.train.distributed): the model is wrapped in DDP
  while it trains, each rank trains on its share of every global batch, the scorer gathers every rank's
  scores, rank 0 alone prints. The trainer knows no concrete batch source, no model and no run directory.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from msrec.config import TrainConfig
from msrec.data.table import BatchSource, TensorTable
from msrec.errors import MsrecError
from msrec.train import distributed as D
from msrec.train.checkpoint import Checkpointer, FitState
from msrec.train.early_stopping import EarlyStopping
from msrec.train.metrics import monitor_report, monitor_value
from msrec.train.optim import build_optimizer, fallback_note
from msrec.train.predict import Scorer, autocast

if TYPE_CHECKING:
    from msrec.data.prepare import EncodedData

PROGRESS_EVERY = 20  # batches between progress-bar refreshes (each one reads the loss: one host sync)
EpochHook = Callable[[dict, dict], None]  # (the epoch's history row, its validation report): Trainer.epoch_hooks


@dataclass
class FitResult:
    epochs: int
    best_epoch: int
    seconds: float
    samples_per_second: float
    best_val: dict  # the best epoch's full validation report (the metrics.json block)
    history: list[dict] = field(default_factory=list)
    best_scores: Tensor | None = field(default=None, repr=False)  # the best epoch's validation scores [N, T]


def _fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


class Trainer:
    def __init__(self, model: nn.Module, cfg: TrainConfig, scenario_names: list[str], tasks: list[str],
                 console: Console | None = None, session: D.Session = D.LOCAL,
                 checkpoints: Checkpointer | None = None):
        self.session = session
        self.checkpoints = checkpoints  # None: no checkpoints (msrec.train.checkpoint)
        self.device = session.device
        self.model = model.to(self.device)
        self.cfg = cfg
        self.tasks = tasks
        quiet = not cfg.progress or not session.writes_run  # rank 0 alone prints
        self.console = console if console is not None and session.writes_run else Console(stderr=True, quiet=quiet)
        weights = cfg.task_weights or [1.0] * len(tasks)
        if len(weights) != len(tasks):
            raise MsrecError(f"train.task_weights: {len(weights)} weights for {len(tasks)} tasks {tasks}")
        self.task_weights = torch.tensor(weights, dtype=torch.float32, device=self.device)
        self.scorer = Scorer(self.model, scenario_names, tasks, cfg.eval_batch_size, cfg.precision, session)
        self.state = FitState()
        self.sharded = None  # the model's table sharded across the ranks, while it trains (msrec.train.sharding)
        # called after each epoch's validation with its history row and validation report (per task and
        # scenario): experiment tracking logs them, tuning prunes on them; a hook may raise to end training
        self.epoch_hooks: list[EpochHook] = []

    # ------------------------------------------------------------------ a whole run
    def fit_and_score(self, data: EncodedData) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """Fit on `data.train` (validated on `data.val`), then the run's metrics (a block per evaluation split,
        in the tasks form, and "train") and the scores behind them. Every rank must hold the same data."""
        self.session.check_same_data(data)
        self.scorer.levels = data.encoder.spec().levels  # per-level metrics of a hierarchical scenario
        fit = self.fit(data.train, data.val)
        metrics: dict[str, Any] = {"val": fit.best_val}
        scores = {"val": fit.best_scores}
        if data.test is not None:
            metrics["test"], scores["test"] = self.scorer.scored_report(data.test)
        metrics["train"] = {"epochs": fit.epochs, "best_epoch": fit.best_epoch, "seconds": fit.seconds,
                            "samples_per_second": fit.samples_per_second,
                            "parameters": sum(p.numel() for p in self.model.parameters()), "history": fit.history}
        if self.session.enabled:
            metrics["train"]["world_size"] = self.session.info.world_size
        if self.sharded is not None:
            metrics["train"]["embedding_sharding"] = self.sharded.summary
        return metrics, scores

    # ------------------------------------------------------------------ training
    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        per_task = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0)
        return (per_task * self.task_weights).sum()

    def aux_loss(self) -> Tensor | None:
        """A model may define `aux_loss() -> Tensor | None`: a term of its own for the training step just run
        (e.g. a regulariser over quantities of that forward pass), called once after each training forward
        and added to the task loss; `None` adds nothing. Read from the unwrapped model (DDP or TorchRec wrap
        it while it trains; the term's graph is part of the wrapped forward's all the same)."""
        hook = getattr(self.model, "aux_loss", None)
        return hook() if callable(hook) else None

    def _optimizer(self) -> torch.optim.Optimizer:
        """train.optimizer for the dense parameters, train.embedding_optimizer for the tables (msrec.train.optim).
        With train.embedding_sharding: torchrec, the table is sharded first (its optimizer is fused)."""
        if self.cfg.embedding_sharding == "torchrec":
            from msrec.train import sharding

            self.sharded = sharding.shard(self.model, self.cfg, self.session)
            self.console.print(sharding.describe(self.sharded.summary), highlight=False, soft_wrap=True)
            return self.sharded.optimizer
        note = fallback_note(self.cfg, self.session.enabled, self.device)
        if note:
            self.console.print(note, highlight=False, soft_wrap=True)
        return build_optimizer(self.model, self.cfg, self.session.enabled, self.device)

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

    def _progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("loss {task.fields[loss]}"),
                        TextColumn("{task.fields[speed]} samples/s"), TimeRemainingColumn(), console=self.console,
                        transient=True, disable=not self.cfg.progress or not self.session.writes_run)

    def fit(self, train: BatchSource, val: TensorTable) -> FitResult:
        """Epochs of training steps, each followed by validation, until the epochs or the patience run out;
        the model ends with the best epoch's weights. With checkpoints, it starts from the newest one (if any)."""
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        generator = torch.Generator().manual_seed(cfg.seed)
        optimizer = self._optimizer()
        source, steps = self.session.share(train, cfg.batch_size)
        scheduler = self._scheduler(optimizer, steps)
        # DDP (or TorchRec's DistributedModelParallel) only while training: freed when fit returns
        step_model = self.sharded.module if self.sharded is not None else self.session.wrap(self.model)
        stopper = EarlyStopping(cfg.patience)
        self.state = FitState()
        if self.checkpoints is not None:
            restored = self.checkpoints.restore(self.model, optimizer, scheduler, stopper, self.device)
            if restored is not None:
                self.state = restored
                self.console.print(f"resumed from a checkpoint: epoch {restored.epoch}, step {restored.step}/{steps}",
                                   highlight=False, soft_wrap=True)
        state = self.state
        epoch = state.epoch - 1
        started = time.perf_counter()

        def checkpoint() -> None:  # after every training step
            if self.checkpoints is not None and self.checkpoints.due((state.epoch - 1) * steps + state.step):
                self.checkpoints.save((state.epoch - 1) * steps + state.step, state, self.model, optimizer,
                                      scheduler, stopper)

        with self._progress() as progress:
            for epoch in range(state.epoch, cfg.epochs + 1):
                if state.step == 0:  # a new epoch (not one resumed mid-way): its batch order starts here
                    state.epoch, state.epoch_rng = epoch, generator.get_state()
                    state.loss_sum, state.seen = torch.zeros((), device=self.device), 0
                else:  # resumed: the same batch order, from the generator's state at the epoch's start
                    generator.set_state(state.epoch_rng)
                bar = progress.add_task(f"epoch {epoch}/{cfg.epochs}", total=steps, loss="-", speed="-")
                loss, seen, seconds = self._epoch(step_model, source, steps, optimizer, scheduler, generator,
                                                  progress, bar, checkpoint)
                progress.remove_task(bar)
                state.train_seconds += seconds
                state.train_samples += seen
                if not math.isfinite(loss):
                    raise MsrecError(f"training diverged at epoch {epoch} (loss {loss}); "
                                     "lower train.lr or check the dense features' scale")
                state.history.append(self._validate_epoch(epoch, val, loss, seen / seconds, stopper))
                state.epoch, state.step = epoch + 1, 0
                if stopper.stop:
                    self.console.print(f"early stop: no improvement for {cfg.patience} epochs", highlight=False,
                                       soft_wrap=True)
                    break
        stopper.restore(self.model)  # also when the epochs ran out
        if self.sharded is not None:  # the table whole again on every rank: scored and saved as any model
            self.sharded.unshard(self.device)
        stopper.close()
        return FitResult(epochs=epoch, best_epoch=stopper.epoch, seconds=time.perf_counter() - started,
                         samples_per_second=state.train_samples / max(state.train_seconds, 1e-9),
                         best_val=self.scorer.report(val, stopper.scores), history=state.history,
                         best_scores=stopper.scores)

    def _epoch(self, model: nn.Module, source: BatchSource, steps: int, optimizer: torch.optim.Optimizer,
               scheduler, generator: torch.Generator, progress: Progress, bar: int,
               checkpoint: Callable[[], None]) -> tuple[float, int, float]:
        """One epoch of `steps` training steps (from `self.state.step`: the steps a resumed epoch already did are
        drawn and skipped): the mean loss and the rows (over all ranks) and its seconds."""
        self.model.train()
        state = self.state
        t0 = time.perf_counter()
        batches = source.batches(self.cfg.batch_size, shuffle=True, generator=generator)
        for _ in itertools.islice(batches, state.step):  # done before the checkpoint resumed from
            pass
        for step, batch in enumerate(itertools.islice(batches, steps - state.step), state.step + 1):
            batch = batch.to(self.device)
            with autocast(self.device, self.cfg.precision):
                logits = model(batch)
            loss = self.loss(logits.float(), batch.labels)
            aux = self.aux_loss()
            if aux is not None:
                loss = loss + aux.float()
            if batch.loss_scale is not None:
                loss = loss * batch.loss_scale
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            state.loss_sum += loss.detach()
            state.seen += len(batch)
            state.step = step
            checkpoint()
            if step % PROGRESS_EVERY == 0 or step == steps:
                progress.update(bar, completed=step, loss=f"{state.loss_sum.item() / step:.4f}",
                                speed=f"{state.seen * self.session.info.world_size / (time.perf_counter() - t0):,.0f}")
        batches.close()  # stops a stream's reader thread when this rank has batches left
        loss_sum, seen = self.session.epoch_totals(state.loss_sum, state.seen)
        return loss_sum.item() / steps, seen, time.perf_counter() - t0

    def validate(self, val: TensorTable) -> tuple[dict, Tensor]:
        """One epoch's validation: what early stopping and the log read (`monitor_report`), and the scores
        (kept for the best epoch, whose full report is computed once at the end)."""
        scores = self.scorer.scores(val)
        return self.scorer.report(val, scores, monitor_report), scores

    def _validate_epoch(self, epoch: int, val: TensorTable, loss: float, speed: float,
                        stopper: EarlyStopping) -> dict:
        """Validate, log the epoch and update early stopping; the epoch's history row."""
        report, scores = self.validate(val)
        score = monitor_value(report, self.cfg.monitor)
        if math.isnan(score):  # e.g. every validation scenario holds one class: no AUC to compare
            if not self.state.nan_warned:
                self.console.print(f"warning: validation {self.cfg.monitor} is undefined (NaN), so epochs cannot "
                                   "be compared; set train.monitor: logloss", highlight=False, soft_wrap=True)
                self.state.nan_warned = True
            score = -math.inf  # any later epoch with a defined score is better
        improved = stopper.update(epoch, score, scores, self.model)
        overall = report["overall"]
        self.console.print(f"epoch {epoch}/{self.cfg.epochs}  loss {loss:.4f}  val macro_auc "
                           f"{_fmt(report['macro_auc'])}  auc {_fmt(overall['auc'])}  logloss "
                           f"{_fmt(overall['logloss'])}  {speed:,.0f} samples/s{'  *' if improved else ''}",
                           highlight=False, soft_wrap=True)
        row = {"epoch": epoch, "train_loss": loss, "val_macro_auc": report["macro_auc"], "val_auc": overall["auc"],
               "val_logloss": overall["logloss"], "samples_per_second": speed}
        for hook in self.epoch_hooks:
            hook(row, report)
        return row

    # ---------------------------------------------------------------- inference
    def predict(self, table: TensorTable) -> Tensor:
        """Probabilities `[N, T]` in row order (this process's rows)."""
        return self.scorer.predict(table)

    def evaluate(self, table: TensorTable) -> dict:
        """The full metrics report of a labelled table (scores gathered over ranks)."""
        return self.scorer.evaluate(table)
