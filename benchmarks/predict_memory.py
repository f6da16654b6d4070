"""`msrec predict` / `msrec evaluate` on a large Parquet input: peak memory and time of scoring it whole (the
input, its encoding and its scores in memory at once: `msrec.predict`, and for evaluate the path a CSV takes)
against chunk by chunk (`msrec.predict_file` and `msrec.evaluate`, what the commands run), the same run and
rows, each in a fresh subprocess (peak RSS from ru_maxrss), runs interleaved.

    python benchmarks/predict_memory.py [--rows 5000000] [--file-rows 1000000] [--chunk-rows 262144] [--repeats 2]
                                        [--out DIR] [--evaluate]

The input is `--rows` synthetic rows in files of `--file-rows` (row groups of a quarter of that); the run a small `dnn`
trained one epoch on 50,000 other rows. Both outputs are checked to hold the same scores (`--evaluate`: the
same metrics report).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

FEATURES = {"sparse": ["user_id", "item_id", "user_group", "item_category"], "dense": ["user_activity", "item_price"],
            "scenario": "scenario", "labels": ["click"]}
MEASURE = """
import json, pathlib, resource, sys, time
import msrec
from msrec import api
task, mode, run, data, out, chunk = sys.argv[1:7]
t0 = time.perf_counter()
if task == "evaluate":
    api.CHUNK_ROWS = int(chunk)
    if mode == "whole":  # the path a CSV input takes: read, encoded and scored at once
        loaded = api.load_run(run)
        report = api._scorer(loaded).evaluate(loaded.encoder.transform(api._read_input(data, loaded), data))
    else:
        report = msrec.evaluate(run, data)
    pathlib.Path(out).write_text(json.dumps(report, sort_keys=True))
elif mode == "whole":
    msrec.predict(run, data, out)
else:
    msrec.predict_file(run, data, out, chunk_rows=int(chunk))
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def prepare(out: Path, rows: int, file_rows: int, labels: bool) -> tuple[Path, Path]:
    import pyarrow.parquet as pq

    import msrec
    from msrec.data.datasets import synthetic

    data = out / f"rows-{rows}-{file_rows}{'-labelled' if labels else ''}"
    data.mkdir(parents=True, exist_ok=True)
    for k in range(rows // file_rows):
        path = data / f"part-{k:04d}.parquet"
        if not path.exists():
            table = synthetic.generate(rows=file_rows, row_seed=k)
            pq.write_table(table if labels else table.drop_columns(["click", "p_click"]), path,
                           row_group_size=file_rows // 4)
    run = out / "run"
    if not (run / "model.safetensors").exists():
        pq.write_table(synthetic.generate(rows=50_000, row_seed=10_000), out / "train.parquet")
        msrec.train({"data": {"train": str(out / "train.parquet"), **FEATURES},
                     "model": {"name": "dnn", "embed_dim": 8, "hidden": [64, 32]},
                     "train": {"epochs": 1, "progress": False}}, out=run, overwrite=True)
    return run, data


def same_report(a, b, tol: float = 1e-6) -> bool:
    """Two metrics reports with the same keys and numbers within `tol` (NaN equal to NaN)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_report(a[k], b[k], tol) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=0, abs_tol=tol) or (math.isnan(a) and math.isnan(b))
    return a == b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--file-rows", type=int, default=1_000_000)
    ap.add_argument("--chunk-rows", type=int, default=262_144)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "msrec-predict-memory")
    ap.add_argument("--evaluate", action="store_true", help="msrec evaluate instead of msrec predict")
    args = ap.parse_args()
    if args.rows % args.file_rows:
        ap.error(f"--rows must be a multiple of --file-rows ({args.file_rows:,})")
    run, data = prepare(args.out, args.rows, args.file_rows, args.evaluate)
    task = "evaluate" if args.evaluate else "predict"
    suffix = "json" if args.evaluate else "parquet"
    results: dict[str, list[dict]] = {"whole": [], "chunked": []}
    for _ in range(args.repeats):
        for mode, runs in results.items():
            proc = subprocess.run([sys.executable, "-c", MEASURE, task, mode, str(run), str(data),
                                   str(args.out / f"{task}-{mode}.{suffix}"), str(args.chunk_rows)],
                                  capture_output=True, text=True, check=True)
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    import numpy as np
    import pyarrow.parquet as pq

    if args.evaluate:  # the same figures (scores batched differently: float rounding, within 1e-6)
        reports = [json.loads((args.out / f"evaluate-{mode}.json").read_text()) for mode in results]
        assert same_report(*reports), "the chunked report differs from the whole one"
    else:
        scores = [pq.read_table(args.out / f"predict-{mode}.parquet", columns=["score_click"])["score_click"].to_numpy()
                  for mode in results]
        np.testing.assert_allclose(scores[0], scores[1], atol=1e-6)
    print(f"msrec {task}: {args.rows:,} rows in {args.rows // args.file_rows} Parquet files, chunks of "
          f"{args.chunk_rows:,} rows, median of {args.repeats} (interleaved); "
          + ("the same report" if args.evaluate else "scores identical"))
    print(f"{'mode':<10}{'seconds':>10}{'rows/s':>12}{'peak RSS MB':>14}{'peak / whole':>14}")
    whole = statistics.median(r["peak_mb"] for r in results["whole"])
    for mode, runs in results.items():
        seconds, peak = statistics.median(r["seconds"] for r in runs), statistics.median(r["peak_mb"] for r in runs)
        print(f"{mode:<10}{seconds:>10.1f}{args.rows / seconds:>12,.0f}{peak:>14,.0f}{peak / whole:>14.2f}")


if __name__ == "__main__":
    main()
