"""Trainer vs bare loop, per model: how much of the model's own speed msrec's training and scoring keep.

For every registered model, in one process:
- trainer: `Trainer.fit` for one epoch (shuffled batches gathered from the table, loss, progress bar,
  validation excluded from the timing: samples/s comes from the trainer's own step timing);
- bare: the same model architecture and optimizer (`build_optimizer` of the same config: row-sparse tables with
  the default `train.embedding_optimizer`) stepping over pre-built, pre-batched tensors, nothing else;
- the same for scoring: `Trainer.predict` vs a bare `no_grad` forward over pre-sliced batches.
Each figure is the median of `--repeats` runs; a ratio trainer/bare is the median over repeats of the
ratio of that repeat's paired runs (trainer and bare alternate which runs first).

    python benchmarks/throughput.py [--rows 200000] [--batch-size 4096] [--repeats 3] [--models dnn star]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from msrec.api import prepare_data
from msrec.config import Config
from msrec.models import build_model, list_models
from msrec.train.optim import build_optimizer
from msrec.train.trainer import Trainer


def bare_train(model, batches, train_cfg) -> float:
    opt = build_optimizer(model, train_cfg)
    model.train()
    t0 = time.perf_counter()
    n = 0
    for b in batches:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(b)
    return n / (time.perf_counter() - t0)


@torch.no_grad()
def bare_score(model, batches) -> float:
    model.eval()
    t0 = time.perf_counter()
    n = 0
    for b in batches:
        torch.sigmoid(model(b))
        n += len(b)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Config.model_validate({"data": {"dataset": "synthetic", "options": {"rows": args.rows}},
                                 "train": {"epochs": 1, "batch_size": args.batch_size, "progress": True,
                                           "eval_batch_size": args.batch_size}})
    data = prepare_data(cfg)
    spec = data.encoder.spec()
    train = data.train
    pre_batched = [b for b in train.batches(args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))]
    score_batches = list(train.batches(args.batch_size))
    names = args.models or [e.name for e in list_models()]
    print(f"{args.rows:,} synthetic rows ({len(train):,} train), batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'model':<16}{'train/s':>12}{'bare/s':>12}{'ratio':>8}{'score/s':>12}{'bare/s':>12}{'ratio':>8}")
    for name in names:
        figures = {"train": [], "bare_train": [], "score": [], "bare_score": []}
        for r in range(args.repeats):
            # Trainer and bare alternate which runs first, so that drift (turbo, a busy neighbour) falls on both.
            for kind in ("trainer", "bare") if r % 2 == 0 else ("bare", "trainer"):
                torch.manual_seed(r)
                model = build_model(name, spec, {})
                if kind == "bare":
                    figures["bare_train"].append(bare_train(model, pre_batched, cfg.train))
                    figures["bare_score"].append(bare_score(model, score_batches))
                    continue
                trainer = Trainer(model, cfg.train.model_copy(update={"progress": False}), spec.scenarios, spec.tasks)
                # Fit on a tiny validation table so the epoch's timing is the training steps only.
                fit = trainer.fit(train, data.val.subset(torch.arange(min(1000, len(data.val)))))
                figures["train"].append(fit.samples_per_second)
                t0 = time.perf_counter()
                trainer.predict(train)
                figures["score"].append(len(train) / (time.perf_counter() - t0))
        m = {k: statistics.median(v) for k, v in figures.items()}
        # The ratio of each repeat's paired runs, then the median over repeats.
        train_ratio = statistics.median(a / b for a, b in zip(figures["train"], figures["bare_train"]))
        score_ratio = statistics.median(a / b for a, b in zip(figures["score"], figures["bare_score"]))
        print(f"{name:<16}{m['train']:>12,.0f}{m['bare_train']:>12,.0f}{train_ratio:>8.2f}"
              f"{m['score']:>12,.0f}{m['bare_score']:>12,.0f}{score_ratio:>8.2f}", flush=True)

if __name__ == "__main__":
    main()
