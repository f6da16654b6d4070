"""`msrec predict` on a large Parquet input: peak memory and time of scoring it whole (`msrec.predict`, the input,
its encoding and its scores in memory at once) against chunk by chunk (`msrec.predict_file`, what the command
runs), the same run and rows, each in a fresh subprocess (peak RSS from ru_maxrss), runs interleaved.

    python benchmarks/predict_memory.py [--rows 5000000] [--file-rows 1000000] [--chunk-rows 262144] [--repeats 2]
                                        [--out DIR]

The input is `--rows` synthetic rows in files of `--file-rows` (row groups of a quarter of that); the run a small `dnn`
trained one epoch on 50,000 other rows. Both outputs are checked to hold the same scores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

FEATURES = {"sparse": ["user_id", "item_id", "user_group", "item_category"], "dense": ["user_activity", "item_price"],
            "scenario": "scenario", "labels": ["click"]}
MEASURE = """
import json, resource, sys, time
import msrec
mode, run, data, out, chunk = sys.argv[1:6]
t0 = time.perf_counter()
rows = (msrec.predict(run, data, out).num_rows if mode == "whole"
        else msrec.predict_file(run, data, out, chunk_rows=int(chunk)))
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def prepare(out: Path, rows: int, file_rows: int) -> tuple[Path, Path]:
    import pyarrow.parquet as pq

    import msrec
    from msrec.data.datasets import synthetic

    data = out / f"rows-{rows}-{file_rows}"
    data.mkdir(parents=True, exist_ok=True)
    for k in range(rows // file_rows):
        path = data / f"part-{k:04d}.parquet"
        if not path.exists():
            pq.write_table(synthetic.generate(rows=file_rows, row_seed=k).drop_columns(["click", "p_click"]), path,
                           row_group_size=file_rows // 4)
    run = out / "run"
    if not (run / "model.safetensors").exists():
        pq.write_table(synthetic.generate(rows=50_000, row_seed=10_000), out / "train.parquet")
        msrec.train({"data": {"train": str(out / "train.parquet"), **FEATURES},
                     "model": {"name": "dnn", "embed_dim": 8, "hidden": [64, 32]},
                     "train": {"epochs": 1, "progress": False}}, out=run, overwrite=True)
    return run, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--file-rows", type=int, default=1_000_000)
    ap.add_argument("--chunk-rows", type=int, default=262_144)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "msrec-predict-memory")
    args = ap.parse_args()
    if args.rows % args.file_rows:
        ap.error(f"--rows must be a multiple of --file-rows ({args.file_rows:,})")
    run, data = prepare(args.out, args.rows, args.file_rows)
    results: dict[str, list[dict]] = {"whole": [], "chunked": []}
    for _ in range(args.repeats):
        for mode, runs in results.items():
            proc = subprocess.run([sys.executable, "-c", MEASURE, mode, str(run), str(data),
                                   str(args.out / f"scores-{mode}.parquet"), str(args.chunk_rows)],
                                  capture_output=True, text=True, check=True)
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    import numpy as np
    import pyarrow.parquet as pq

    scores = [pq.read_table(args.out / f"scores-{mode}.parquet", columns=["score_click"])["score_click"].to_numpy()
              for mode in results]
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-6)
    print(f"{args.rows:,} rows in {args.rows // args.file_rows} Parquet files, chunks of {args.chunk_rows:,} rows, "
          f"median of {args.repeats} (interleaved); scores identical")
    print(f"{'mode':<10}{'seconds':>10}{'rows/s':>12}{'peak RSS MB':>14}{'peak / whole':>14}")
    whole = statistics.median(r["peak_mb"] for r in results["whole"])
    for mode, runs in results.items():
        seconds, peak = statistics.median(r["seconds"] for r in runs), statistics.median(r["peak_mb"] for r in runs)
        print(f"{mode:<10}{seconds:>10.1f}{args.rows / seconds:>12,.0f}{peak:>14,.0f}{peak / whole:>14.2f}")


if __name__ == "__main__":
    main()
