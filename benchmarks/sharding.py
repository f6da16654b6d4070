"""Embedding tables sharded across ranks with TorchRec against replicated DDP and one process (issue 12).

    python benchmarks/sharding.py speed --ids 1000000 --rows 200000 --repeats 3
    MSREC_DATA=/work/data python benchmarks/sharding.py quality configs/movielens-100k/dnn.yaml \\
        configs/movielens-100k/star.yaml synthetic
    MSREC_DATA=/work/data python benchmarks/sharding.py plan configs/movielens-100k/dnn.yaml

`speed`: one epoch of `dnn` on synthetic rows whose user and item tables are sized by `data.hash_buckets` to
`--ids` rows in all (the table holds ~ids rows whatever the rows hold), `msrec train --nproc 2` with the table
replicated (DDP: every rank holds it, sparse gradients all-reduced) and sharded (`train.embedding_sharding:
torchrec`), interleaved, `--repeats` rounds. Printed: training samples/s (the trainer's figure, all ranks'
rows), the sharded / replicated ratio (median of the rounds' ratios), the peak RSS of the largest process, and
the rows per rank of the sharding plan. The data file is written once (`--out`) and read by every run.

`plan`: where TorchRec's planner (2 CPU ranks) puts the rows of each config's data as msrec shards them (one
fused table) and as one table per field would be, without training (the design choice; docs/distributed.md).

`quality`: each config (a file, or `synthetic` for `dnn` on the synthetic default data) trained by 1 process,
by 2 replicated ranks and by 2 sharded ranks; printed: test macro AUC, the difference from 1 process, the
rows per rank. Every run is `msrec train` in a child process with OMP_NUM_THREADS=1 (1 thread per process).
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

import yaml

SCHEMA = {"sparse": ["user_id", "item_id", "user_group", "item_category"], "dense": ["user_activity", "item_price"],
          "scenario": "scenario", "labels": ["click"]}
# Runs the command given after it and prints the peak RSS (KiB) of the largest process under it.
PEAK = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")
SETUPS = {"1 process": (1, "none"), "2 ranks, replicated (DDP)": (2, "none"), "2 ranks, sharded (TorchRec)": (2, "torchrec")}


def train(config: Path, out: Path, nproc: int, sharding: str) -> dict:
    """`msrec train` in a child process: its metrics.json, wall seconds and peak RSS (MiB)."""
    cmd = [sys.executable, "-m", "msrec", "train", str(config), "--out", str(out), "--overwrite",
           "--set", f"train.embedding_sharding={sharding}", "--set", "train.progress=false",
           "--set", "train.checkpoint.every_minutes=null"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, *cmd], check=False, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"metrics": metrics, "wall": time.perf_counter() - t0, "peak_mib": int(done.stdout.split()[-1]) / 1024}


def rows_per_rank(metrics: dict) -> str:
    plan = metrics["train"].get("embedding_sharding")
    return f"{plan['type']}: " + " / ".join(f"{r:,}" for r in plan["rows_per_rank"]) if plan else "all, on every rank"


def speed(args: argparse.Namespace) -> None:
    import pyarrow.parquet as pq

    from msrec.data.datasets import synthetic

    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / f"rows{args.rows}-ids{args.ids}.parquet"
    if not data.exists():
        pq.write_table(synthetic.generate(rows=args.rows, users=args.ids // 2, items=args.ids // 2), data)
    config = args.out / "speed.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"train": str(data), **SCHEMA, "hash_buckets": {"user_id": args.ids // 2, "item_id": args.ids // 2}},
        "model": {"name": "dnn"},
        "train": {"epochs": 1, "batch_size": args.batch_size, "device": "cpu"}}))
    setups = {k: v for k, v in SETUPS.items() if v[0] > 1}
    results: dict[str, list[dict]] = {name: [] for name in setups}
    for round_ in range(args.repeats):
        for name, (nproc, sharding) in setups.items():
            r = train(config, args.out / "run", nproc, sharding)
            results[name].append(r)
            print(f"round {round_ + 1}: {name}: {r['metrics']['train']['samples_per_second']:,.0f} samples/s, "
                  f"peak {r['peak_mib']:,.0f} MiB", file=sys.stderr, flush=True)
    names = list(setups)
    ratios = [s["metrics"]["train"]["samples_per_second"] / r["metrics"]["train"]["samples_per_second"]
              for r, s in zip(results[names[0]], results[names[1]], strict=True)]
    load = os.getloadavg()
    print(f"dnn, synthetic {args.rows:,} rows (80 % training), table of ~{args.ids:,} id rows (data.hash_buckets), "
          f"global batch {args.batch_size}, 1 epoch, 1 thread per process, medians of {args.repeats} interleaved "
          f"rounds; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end\n")
    print("| setup | train samples/s | ratio to replicated | peak RSS of the largest process, MiB | rows per rank |")
    print("|---|---:|---:|---:|---|")
    for k, name in enumerate(names):
        runs = results[name]
        sps = statistics.median(r["metrics"]["train"]["samples_per_second"] for r in runs)
        ratio = "1.00" if k == 0 else f"{statistics.median(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)})"
        peak = statistics.median(r["peak_mib"] for r in runs)
        print(f"| {name} | {sps:,.0f} | {ratio} | {peak:,.0f} | {rows_per_rank(runs[0]['metrics'])} |")


def quality(args: argparse.Namespace) -> None:
    print("| config | setup | test macro AUC | minus 1 process | best epoch | rows per rank |")
    print("|---|---|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for item in args.configs:
            if item == "synthetic":
                config = Path(tmp) / "synthetic.yaml"
                config.write_text(yaml.safe_dump({"data": {"dataset": "synthetic"}, "model": {"name": "dnn"},
                                                  "train": {"epochs": 10, "batch_size": 4096, "device": "cpu"}}))
            else:
                config = Path(item).resolve()
            reference = None
            for name, (nproc, sharding) in SETUPS.items():
                r = train(config, Path(tmp) / "run", nproc, sharding)
                auc = r["metrics"]["test"]["macro_auc"]
                reference = auc if reference is None else reference
                print(f"| {item} | {name} | {auc:.4f} | {auc - reference:+.4f} | "
                      f"{r['metrics']['train']['best_epoch']} | {rows_per_rank(r['metrics'])} |", flush=True)


def _plan(sizes: list[int], names: list[str], dim: int) -> tuple[list[float], set[str]]:
    """Rows per rank (a column shard counts its share of a row) and the sharding types, for 2 CPU ranks."""
    import torch
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec import EmbeddingCollection, EmbeddingConfig
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology

    tables = [EmbeddingConfig(name=n, embedding_dim=dim, num_embeddings=s, feature_names=[n]) for n, s in zip(names, sizes)]
    collection = EmbeddingCollection(tables=tables, device=torch.device("meta"))
    sharder = EmbeddingCollectionSharder(fused_params={"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD})
    plan = EmbeddingShardingPlanner(topology=Topology(world_size=2, compute_device="cpu")).plan(collection, [sharder])
    rows, kinds = [0.0, 0.0], set()
    for options in plan.plan[""].values():
        kinds.add(options.sharding_type)
        for shard in options.sharding_spec.shards:
            rows[shard.placement.rank()] += shard.shard_sizes[0] * shard.shard_sizes[1] / dim
    return rows, kinds


def plan(args: argparse.Namespace) -> None:
    import logging
    import warnings

    import msrec.api

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    print("| config | table rows per field | tables | sharding types | rows per rank |")
    print("|---|---|---|---|---|")
    for item in args.configs:
        spec = msrec.api.prepare_data(msrec.api.as_config(item)).encoder.spec()
        sizes, names = [*spec.sparse_vocab, *spec.list_vocab], [*spec.sparse_fields, *spec.list_fields]
        fields = ", ".join(f"{n} {s:,}" for n, s in zip(names, sizes))
        for label, (rows, kinds) in {"one fused (msrec)": _plan([sum(sizes)], ["features"], 16),
                                     "one per field": _plan(sizes, names, 16)}.items():
            print(f"| {item} | {fields} | {label} | {', '.join(sorted(kinds))} | "
                  f"{' / '.join(f'{r:,.0f}' for r in rows)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("speed")
    p.add_argument("--ids", type=int, default=1_000_000)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "msrec-sharding-bench")
    q = commands.add_parser("quality")
    q.add_argument("configs", nargs="+", help="config files, or `synthetic`")
    commands.add_parser("plan").add_argument("configs", nargs="+", help="config files")
    args = parser.parse_args()
    {"speed": speed, "quality": quality, "plan": plan}[args.command](args)


if __name__ == "__main__":
    main()
