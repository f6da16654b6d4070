"""Scale: peak memory and throughput of in-memory vs streaming training on synthetic Parquet data.

    python benchmarks/scale.py write --rows 50000000 --out /tmp/msrec-scale   # folders of 5M-row files
    python benchmarks/scale.py stream --rows 10000000 50000000 --model dnn       # one epoch each, streaming
    python benchmarks/scale.py memory --rows 10000000 --model dnn                # one epoch, in memory
    python benchmarks/scale.py table --rows 20000000 --model split_merge         # generator -> table bytes, 1 epoch

Each measurement runs in a fresh subprocess and reports its peak RSS (ru_maxrss), so runs do not
inherit each other's memory. Data for `--rows N` is the first N rows of the written folder (whole files).
`--repeats K` runs each measurement K times and ends with a line of medians per row count.
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

CHUNK = 5_000_000
FEATURES = {"sparse": ["user_id", "item_id", "user_group", "item_category"], "dense": ["user_activity", "item_price"],
            "scenario": "scenario", "labels": ["click"]}


def write(rows: int, out: Path) -> None:
    import pyarrow.parquet as pq

    from msrec.data.datasets import synthetic

    out.mkdir(parents=True, exist_ok=True)
    if not (out / "val.parquet").exists():
        pq.write_table(synthetic.generate(rows=200_000, row_seed=10_000), out / "val.parquet")
    for k in range(rows // CHUNK):
        path = out / "train" / f"part-{k:04d}.parquet"
        if path.exists():
            continue
        path.parent.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        pq.write_table(synthetic.generate(rows=CHUNK, row_seed=k), path, row_group_size=250_000)
        print(f"wrote {path} in {time.perf_counter() - t0:.1f}s", flush=True)


def _subset(out: Path, rows: int) -> Path:
    """A folder of links to the first rows/CHUNK files, so a run reads exactly that much."""
    folder = out / f"first-{rows}"
    folder.mkdir(exist_ok=True)
    for k in range(rows // CHUNK):
        link = folder / f"part-{k:04d}.parquet"
        if not link.exists():
            link.symlink_to(out / "train" / f"part-{k:04d}.parquet")
    return folder


def _measure(config: dict) -> dict:
    import msrec

    t0 = time.perf_counter()
    result = msrec.train(config, save=False)
    table = result.metrics
    return {"seconds": time.perf_counter() - t0, "samples_per_second": table["train"]["samples_per_second"],
            "val_macro_auc": table["val"]["macro_auc"],
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_one(mode: str, rows: int, model: str, out: Path) -> dict:
    train_cfg = {"epochs": 1, "batch_size": 4096, "progress": False}
    if mode == "table":
        import torch

        from msrec import api
        from msrec.config import Config
        from msrec.data.datasets import synthetic

        raw = synthetic.generate(rows=rows)
        column_bytes = sum(raw[c].nbytes for c in ["user_id", "item_id", "user_group", "item_category", "scenario",
                                                      "user_activity", "item_price", "click", "p_click"])
        del raw
        cfg = Config.model_validate({"data": {"dataset": "synthetic", "options": {"rows": rows},
                                              "split": [0.98, 0.02, 0.0]},
                                     "model": {"name": model}, "train": train_cfg})
        data = api.prepare_data(cfg)
        train = data.train
        ratio = train.nbytes / (column_bytes * len(train) / rows)
        t0 = time.perf_counter()
        result = api.train(cfg, save=False, data=data)
        return {"rows": rows, "table_bytes_per_row": train.nbytes / len(train),
                "table_vs_columns": ratio, "id_dtype": str(train.sparse.dtype),
                "samples_per_second": result.metrics["train"]["samples_per_second"],
                "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(),
                "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    folder = _subset(out, rows)
    data = {**FEATURES, "val": str(out / "val.parquet")}
    if mode == "stream":
        data.update(train=str(folder), streaming=True)
    else:
        data.update(train=str(folder))
    res = _measure({"data": data, "model": {"name": model}, "train": train_cfg})
    return {"mode": mode, "rows": rows, **res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["write", "stream", "memory", "table", "_one"])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000_000])
    ap.add_argument("--model", default="dnn")
    ap.add_argument("--out", type=Path, default=Path("/tmp/msrec-scale"))
    ap.add_argument("--mode", default="stream")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    if args.command == "write":
        write(max(args.rows), args.out)
        return
    if args.command == "_one":
        print(json.dumps(run_one(args.mode, args.rows[0], args.model, args.out)))
        return
    for rows in args.rows:
        runs = []
        for _ in range(args.repeats):
            proc = subprocess.run([sys.executable, __file__, "_one", "--mode", args.command, "--rows", str(rows),
                                   "--model", args.model, "--out", str(args.out)], capture_output=True, text=True,
                                  check=False)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                sys.exit(proc.returncode)
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
        if args.repeats > 1:
            numbers = [k for k, v in runs[0].items() if isinstance(v, float)]
            print(json.dumps({"median_of": len(runs), "mode": args.command, "rows": rows,
                              **{k: statistics.median(r[k] for r in runs) for k in numbers}}), flush=True)

if __name__ == "__main__":
    main()
