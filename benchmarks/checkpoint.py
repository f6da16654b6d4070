"""Checkpoints (issue 15): what one costs at 10^6 and 10^7 embedding rows, and what they cost a training run.

    python benchmarks/checkpoint.py                                    # both parts, the sizes below
    python benchmarks/checkpoint.py --part write --table-rows 1000000 --repeats 3
    python benchmarks/checkpoint.py --part throughput --ids 1000000 --rows 250000 --repeats 3

`write`: the `dnn` model (default options, embed_dim 16) over a table of `--table-rows` rows (user and item ids,
half each), its default optimizer (dense Adam + row-wise Adagrad on the table, state created by one step) and the
early-stopping copy of the best weights: the state a checkpoint holds. Per size (a child process each, one at a
time: 10^7 rows are 640 MB of weights), `Checkpointer.save` (DCP, fsynced, renamed) and, as the reference in the
same process, `torch.save` of the same state to one fsynced file, interleaved, `--repeats` times; then
`Checkpointer.restore` into a fresh model and optimizer. Printed: the checkpoint's size on disk and medians.

`throughput`: one epoch of `dnn` on `--rows` synthetic rows (80 % training rows) whose user and item ids span
`--ids` (`data.hash_buckets` sizes the table to exactly that), batch 4096, one thread, in three settings run
interleaved (a child process each, `--repeats` rounds): checkpoints off, the default (`every_minutes: 10`) and a
short period (`every_steps: --every`). Printed: the training loop's samples/s (the trainer's own figure, which
includes the checkpoint writes) and its samples per CPU second (steadier when other jobs share the cores; a write's
waits on the disk are not CPU time), medians and their ratios to `off` (medians of each round's ratio), and the
writes' mean time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCHEMA = {"sparse": ["user_id", "item_id", "user_group", "item_category"], "dense": ["user_activity", "item_price"],
          "scenario": "scenario", "labels": ["click"]}


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def write_cost(table_rows: int, repeats: int, folder: Path) -> dict:
    """One size, in this process: checkpoint size, save (DCP) and torch.save times, restore time."""
    import torch

    from msrec.config import CheckpointConfig, TrainConfig
    from msrec.data.table import Batch
    from msrec.models.registry import build_model, parse_options
    from msrec.schema import FeatureSpec
    from msrec.train import trainer
    from msrec.train.checkpoint import Checkpointer, FitState
    from msrec.train.optim import build_optimizer

    torch.set_num_threads(1)
    half = table_rows // 2
    spec = FeatureSpec(SCHEMA["sparse"], [half, half, 11, 21], [], [], 4, [], ["s0", "s1", "s2"], ["click"])

    def state():
        model = build_model("dnn", spec, parse_options("dnn", {"embed_dim": 16}))
        cfg = TrainConfig()
        optimizer = build_optimizer(model, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        return model, optimizer, scheduler, trainer.EarlyStopping(cfg.patience)

    model, optimizer, scheduler, stopper = state()
    n = 4096
    batch = Batch(sparse=torch.stack([torch.randint(1, half, (n,)), torch.randint(1, half, (n,)),
                                      torch.randint(1, 11, (n,)), torch.randint(1, 21, (n,))], 1),
                  dense=torch.randn(n, 4), scenario=torch.randint(0, 3, (n,)), labels=torch.rand(n, 1).round())
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)
    loss.backward()
    optimizer.step()  # the optimizer state exists (row-wise Adagrad: one value per row)
    stopper.update(1, 0.5, torch.rand(1000, 1), model)  # the best weights so far: a second copy of the model
    fit = FitState(epoch_rng=torch.Generator().get_state(), loss_sum=torch.zeros(()))
    checkpoints = Checkpointer(folder / "ckpt", CheckpointConfig(every_steps=1, keep=1), {"config": {}, "data": {}})
    saves, reference = [], []
    for step in range(1, repeats + 1):
        t0 = time.perf_counter()
        checkpoints.save(step, fit, model, optimizer, scheduler, stopper)
        saves.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with open(folder / "reference.pt", "wb") as f:  # the same state, one torch.save file
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "stopper": stopper.state_dict(), "fit": fit.to_dict()}, f)
            f.flush()
            os.fsync(f.fileno())
        reference.append(time.perf_counter() - t0)
    size, reference_size = _size(checkpoints.files()[-1]), _size(folder / "reference.pt")
    del model, optimizer, scheduler, stopper
    model, optimizer, scheduler, stopper = state()
    t0 = time.perf_counter()
    checkpoints.restore(model, optimizer, scheduler, stopper, torch.device("cpu"))
    restore = time.perf_counter() - t0
    table = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embedding" in n)
    return {"table_rows": table_rows, "table_bytes": table, "size_bytes": size, "reference_bytes": reference_size,
            "save_s": statistics.median(saves), "saves_s": saves, "torch_save_s": statistics.median(reference),
            "ratio": statistics.median(s / r for s, r in zip(saves, reference)), "restore_s": restore}


def data_file(ids: int, rows: int, out: Path) -> Path:
    import pyarrow.parquet as pq

    from msrec.data.datasets import synthetic

    path = out / f"rows{rows}-ids{ids}.parquet"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(synthetic.generate(rows=rows, users=max(1, ids // 2), items=max(1, ids // 2)), path)
    return path


SETTINGS = {"off": {"every_minutes": None}, "default": {}, "short": None}  # short: every_steps from --every


def train_once(path: Path, ids: int, checkpoint: dict, out: Path) -> dict:
    """One epoch in this process: the training loop's samples/s and the checkpoint writes' times."""
    import msrec
    from msrec.train import checkpoint as ckpt
    from msrec.train.trainer import Trainer

    seconds, cpu = [], {"seconds": 0.0, "rows": 0}
    save, epoch = ckpt.Checkpointer.save, Trainer._epoch

    def timed_epoch(self, *args, **kwargs):  # the CPU time of the training loop (checkpoint writes included)
        start = time.process_time()
        out = epoch(self, *args, **kwargs)
        cpu["seconds"] += time.process_time() - start
        cpu["rows"] += out[1]
        return out

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        result = save(self, *args, **kwargs)
        seconds.append(time.perf_counter() - t0)
        return result

    ckpt.Checkpointer.save, Trainer._epoch = timed, timed_epoch
    half = max(1, ids // 2)
    cfg = {"data": {"train": str(path), **SCHEMA, "hash_buckets": {"user_id": half, "item_id": half}},
           "model": {"name": "dnn", "embed_dim": 16},
           "train": {"epochs": 1, "batch_size": 4096, "progress": False, "threads": 1, "checkpoint": checkpoint}}
    result = msrec.train(cfg, out=out, overwrite=True)
    return {"samples_per_second": result.metrics["train"]["samples_per_second"],
            "samples_per_cpu_second": cpu["rows"] / cpu["seconds"], "writes": len(seconds),
            "write_s": statistics.mean(seconds) if seconds else None}


def due_cost(calls: int = 200_000) -> float:
    """Seconds per call of the check the default period makes after every step (one clock read)."""
    from msrec.config import CheckpointConfig
    from msrec.train.checkpoint import Checkpointer

    checkpoints = Checkpointer("/nonexistent", CheckpointConfig(), {})
    t0 = time.perf_counter()
    for step in range(calls):
        checkpoints.due(step)
    return (time.perf_counter() - t0) / calls


def child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        sys.exit(proc.returncode)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["write", "throughput", "both"], default="both")
    ap.add_argument("--table-rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--ids", type=int, default=1_000_000)
    ap.add_argument("--rows", type=int, default=250_000)
    ap.add_argument("--every", type=int, default=10, help="the short period, in steps")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/msrec-checkpoint-bench"))
    ap.add_argument("--_write", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_train", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._write:
        with tempfile.TemporaryDirectory(dir=args.out) as folder:
            print(json.dumps(write_cost(args._write, args.repeats, Path(folder))))
        return
    if args._train:
        name, checkpoint = json.loads(args._train)
        print(json.dumps(train_once(data_file(args.ids, args.rows, args.out), args.ids, checkpoint,
                                    args.out / f"run-{name}")))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    common = ["--out", str(args.out), "--repeats", str(args.repeats)]
    if args.part in ("write", "both"):
        print(f"{'table rows':>11} {'table MiB':>9} {'ckpt MiB':>9} {'save s':>7} {'torch.save s':>12} {'ratio':>6} "
              f"{'restore s':>9}", flush=True)
        for rows in args.table_rows:
            m = child("--_write", str(rows), *common)
            print(f"{rows:>11,} {m['table_bytes'] / 2**20:>9,.0f} {m['size_bytes'] / 2**20:>9,.0f} {m['save_s']:>7.2f} "
                  f"{m['torch_save_s']:>12.2f} {m['ratio']:>6.2f} {m['restore_s']:>9.2f}   saves "
                  + ", ".join(f"{s:.2f}" for s in m["saves_s"]), flush=True)
    if args.part in ("throughput", "both"):
        print(f"the default's cost per training step (Checkpointer.due, not due): {due_cost() * 1e6:.2f} us")
        data_file(args.ids, args.rows, args.out)
        settings = {**SETTINGS, "short": {"every_steps": args.every, "every_minutes": None}}
        rounds = [{name: child("--_train", json.dumps([name, checkpoint]), "--ids", str(args.ids), "--rows",
                               str(args.rows), *common) for name, checkpoint in settings.items()}
                  for _ in range(args.repeats)]
        print(f"{args.rows:,} rows, {args.ids:,} ids, {args.repeats} rounds")
        print(f"{'setting':<24} {'samples/s':>10} {'ratio':>6} {'per CPU s':>10} {'ratio':>6} {'writes':>6} "
              f"{'s/write':>7}", flush=True)

        def median(name: str, key: str, ratio: bool = False) -> float:
            return statistics.median(r[name][key] / (r["off"][key] if ratio else 1) for r in rounds)

        for name in settings:
            writes = [r[name]["write_s"] for r in rounds if r[name]["write_s"] is not None]
            label = {"off": "off", "default": "default (every 10 min)", "short": f"every {args.every} steps"}[name]
            print(f"{label:<24} {median(name, 'samples_per_second'):>10,.0f} "
                  f"{median(name, 'samples_per_second', True):>6.3f} {median(name, 'samples_per_cpu_second'):>10,.0f} "
                  f"{median(name, 'samples_per_cpu_second', True):>6.3f} {rounds[0][name]['writes']:>6} "
                  f"{statistics.mean(writes) if writes else 0:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
