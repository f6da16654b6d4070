"""Vocabulary scale: samples/s and peak RSS of one epoch as the embedding table grows (issue 12).

    python benchmarks/vocab.py                                  # dnn and star, 1e4 / 1e6 / 1e7 ids, 1M rows
    python benchmarks/vocab.py --ids 10000 1000000 --models dnn --modes default --rows 200000 --repeats 3

Every setting trains one epoch of a model on the same number of synthetic rows (`--rows`, 80 % of them
training rows) whose id space is `--ids` (`users` = `items` = ids / 2); `data.hash_buckets` sizes the
user and item tables to exactly that, so the table has ~ids rows whatever the rows happen to hold. Modes:
`default` (the default config: row-sparse tables with rowwise_adagrad), `dense` (the previous path:
`train.embedding_optimizer.name: dense`, one Adam over every row every step) and `bf16` (the default with
`model.table_dtype: bfloat16`: the table stored in 16 bits). The data are generated once per
id count and written to Parquet (`--out`), so that each measurement (a child process, for its own peak RSS)
reads the same file and holds no generator state. Printed per model and mode: samples/s of the training
steps (wall clock) and its ratio to the smallest id count, the same per CPU second of the training epochs
(steadier when other jobs share the cores), peak RSS, the table's bytes, and the RSS above the smallest
setting's over the table's bytes (the goal: <= 1.5). With `--repeats K` every id count of a model and mode
runs once per round, K rounds; printed are medians, and a ratio is the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SCHEMA = {"sparse": ["user_id", "item_id", "user_group", "item_category"], "dense": ["user_activity", "item_price"],
          "scenario": "scenario", "labels": ["click"]}


def data_file(ids: int, rows: int, out: Path) -> tuple[Path, int]:
    """The synthetic rows for an id count (written once) and the distinct user + item ids they hold."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from msrec.data.datasets import synthetic

    path = out / f"rows{rows}-ids{ids}.parquet"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(synthetic.generate(rows=rows, users=max(1, ids // 2), items=max(1, ids // 2)), path)
    table = pq.read_table(path, columns=["user_id", "item_id"])
    return path, sum(pc.count_distinct(table[c]).as_py() for c in table.column_names)


def config(path: Path, ids: int, model: str, mode: str, threads: int) -> dict:
    half = max(1, ids // 2)
    return {"data": {"train": str(path), **SCHEMA, "hash_buckets": {"user_id": half, "item_id": half}},
            "model": {"name": model, **({"table_dtype": "bfloat16"} if mode == "bf16" else {})},
            "train": {"epochs": 1, "batch_size": 4096, "progress": False, "threads": threads,
                      **({"embedding_optimizer": {"name": "dense"}} if mode == "dense" else {})}}


def measure(cfg: dict) -> dict:
    """One epoch in this process: training samples/s, the table's bytes and this process's peak RSS."""
    from torch import nn

    import msrec
    from msrec.train.trainer import Trainer

    cpu = {"seconds": 0.0, "rows": 0}
    epoch = Trainer._epoch

    def timed_epoch(self, *args, **kwargs):  # the CPU time of the training steps alone
        start = time.process_time()
        out = epoch(self, *args, **kwargs)
        cpu["seconds"] += time.process_time() - start
        cpu["rows"] += out[1]
        return out

    Trainer._epoch = timed_epoch
    t0 = time.perf_counter()
    result = msrec.train(cfg, save=False)
    table = sum(m.weight.numel() * m.weight.element_size() for m in result.model.modules()
                if isinstance(m, nn.Embedding))
    return {"samples_per_second": result.metrics["train"]["samples_per_second"], "seconds": time.perf_counter() - t0,
            "samples_per_cpu_second": cpu["rows"] / cpu["seconds"],
            "table_bytes": table, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "val_macro_auc": result.metrics["val"]["macro_auc"]}


def summary(rounds: list[list[dict]], i: int) -> dict:
    """Setting i over the rounds: medians, and ratios to setting 0 as medians of each round's ratio."""
    def median(f):
        return statistics.median(f(runs[i], runs[0]) for runs in rounds)

    return {"table_bytes": rounds[0][i]["table_bytes"],
            "samples_per_second": median(lambda r, _: r["samples_per_second"]),
            "samples_per_cpu_second": median(lambda r, _: r["samples_per_cpu_second"]),
            "peak_rss_bytes": median(lambda r, _: r["peak_rss_bytes"]),
            "ratio": median(lambda r, b: r["samples_per_second"] / b["samples_per_second"]),
            "cpu_ratio": median(lambda r, b: r["samples_per_cpu_second"] / b["samples_per_cpu_second"]),
            "extra_rss_over_table": median(lambda r, b: (r["peak_rss_bytes"] - b["peak_rss_bytes"]) / r["table_bytes"])}


def child(cfg: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "_one", json.dumps(cfg)], capture_output=True, text=True,
                          check=False)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        sys.exit(proc.returncode)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", nargs="?", default="run", choices=["run", "_one"])
    ap.add_argument("cfg", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("--ids", type=int, nargs="+", default=[10_000, 1_000_000, 10_000_000])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--models", nargs="+", default=["dnn", "star"])
    ap.add_argument("--modes", nargs="+", default=["default", "dense"], choices=["default", "dense", "bf16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/msrec-vocab"))
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    args = ap.parse_args()
    if args.command == "_one":
        print(json.dumps(measure(json.loads(args.cfg))))
        return
    files = {ids: data_file(ids, args.rows, args.out) for ids in args.ids}
    records = []
    print(f"{args.rows:,} rows, threads {args.threads}; distinct user+item ids in the rows: "
          + ", ".join(f"{ids:,} -> {seen:,}" for ids, (_, seen) in files.items()), flush=True)
    print(f"{'model':8} {'mode':8} {'ids':>11} {'table MiB':>10} {'samples/s':>10} {'ratio':>6} {'per CPU s':>10} "
          f"{'ratio':>6} {'peak RSS MiB':>12} {'extra/table':>11}", flush=True)
    for model in args.models:
        for mode in args.modes:
            rounds = [[{"model": model, "mode": mode, "ids": ids, "rows": args.rows, "distinct_ids": files[ids][1],
                        "threads": args.threads, **child(config(files[ids][0], ids, model, mode, args.threads))}
                       for ids in args.ids] for _ in range(args.repeats)]
            records += [r for runs in rounds for r in runs]
            for i, ids in enumerate(args.ids):
                m = summary(rounds, i)
                over = f"{m['extra_rss_over_table']:.2f}" if i else "-"
                print(f"{model:8} {mode:8} {ids:>11,} {m['table_bytes'] / 2**20:>10,.1f} {m['samples_per_second']:>10,.0f} "
                      f"{m['ratio']:>6.2f} {m['samples_per_cpu_second']:>10,.0f} {m['cpu_ratio']:>6.2f} "
                      f"{m['peak_rss_bytes'] / 2**20:>12,.0f} {over:>11}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
