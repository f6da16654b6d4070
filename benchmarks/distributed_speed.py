"""1 process vs N processes (torchrun + DDP, gloo) on this machine: training samples/s of the same job.

    .venv/bin/python benchmarks/distributed_speed.py --rows 300000 --epochs 2 --nproc 2

Runs `msrec train` on the synthetic data with dnn (same global batch, same seed) as:
  1 process using every core (torch's intra-op threads), 1 process with 1 thread, N processes with
  cores/N threads each (`msrec train --nproc N`). Prints a Markdown table: training samples/s per epoch
  (the trainer's own figure: the training loop only, no data preparation or evaluation), the whole
  command's wall time, and the test macro AUC (the same job, so it should hardly move).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def run(config: Path, out: Path, threads: int, nproc: int) -> dict:
    cmd = [sys.executable, "-m", "msrec", "train", str(config), "--out", str(out), "--set", f"train.threads={threads}"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    metrics = json.loads((out / "metrics.json").read_text())
    return {"epochs": [h["samples_per_second"] for h in metrics["train"]["history"]], "wall": wall,
            "auc": metrics["test"]["macro_auc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--model", default="dnn")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(yaml.safe_dump({
            "data": {"dataset": "synthetic", "options": {"rows": args.rows}},
            "model": {"name": args.model},
            "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": 0.002, "patience": args.epochs,
                      "progress": False, "device": "cpu"}}))
        setups = [("1 process", cores, 1), ("1 process", 1, 1),
                  (f"{args.nproc} processes (torchrun, gloo)", max(1, cores // args.nproc), args.nproc)]
        rows = []
        for k, (name, threads, nproc) in enumerate(setups):
            r = run(config, Path(tmp) / f"run{k}", threads, nproc)
            rows.append((name, threads, r))
            print(f"done: {name}, {threads} thread(s) each: {r}", file=sys.stderr, flush=True)
    load = os.getloadavg()
    print(f"{args.model}, synthetic {args.rows:,} rows, global batch {args.batch_size}, {args.epochs} epochs, "
          f"{cores} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) at the end\n")
    print("| setup | threads per process | train samples/s per epoch | wall s (whole command) | test macro AUC |")
    print("|---|---|---|---|---|")
    for name, threads, r in rows:
        per_epoch = ", ".join(f"{v:,.0f}" for v in r["epochs"])
        print(f"| {name} | {threads} | {per_epoch} | {r['wall']:.0f} | {r['auc']:.4f} |")


if __name__ == "__main__":
    main()
