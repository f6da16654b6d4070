"""Ingest speed: reading and encoding CSV / Parquet into tensor tables, rows per second.

A MovieLens-like schema (user and item ids, two categorical side features, two dense values, the
scenario, a 0/1 label) from the synthetic generator, written once as CSV and as Parquet; then, for each
format, the median of `--repeats` runs of read (pyarrow) + encoder fit + transform, the path `msrec
train` takes before training.

    python benchmarks/ingest.py [--rows 2000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from msrec.data.datasets import synthetic
from msrec.data.encode import Encoder
from msrec.data.io import read_table
from msrec.schema import Schema


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    d = synthetic.defaults(synthetic.SyntheticOptions())
    schema = Schema(sparse=d["sparse"], dense=d["dense"], lists={}, scenario="scenario",
                    scenario_features=["scenario"], labels=["click"], user="user_id")
    table = synthetic.generate(rows=args.rows).select([*d["sparse"], *d["dense"], "scenario", "click"])
    with tempfile.TemporaryDirectory() as tmp:
        files = {"parquet": Path(tmp) / "data.parquet", "csv": Path(tmp) / "data.csv"}
        pq.write_table(table, files["parquet"])
        pacsv.write_csv(table, files["csv"])
        print(f"{args.rows:,} rows, median of {args.repeats}")
        print(f"{'format':<10}{'read s':>8}{'fit s':>8}{'encode s':>10}{'rows/s':>14}")
        for fmt, path in files.items():
            runs = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                raw = read_table(path, string_columns=[*schema.sparse, schema.scenario])
                t1 = time.perf_counter()
                encoder = Encoder(schema).fit(raw)
                t2 = time.perf_counter()
                encoder.transform(raw)
                t3 = time.perf_counter()
                runs.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
            read, fit, enc, total = (statistics.median(r[i] for r in runs) for i in range(4))
            print(f"{fmt:<10}{read:>8.2f}{fit:>8.2f}{enc:>10.2f}{args.rows / total:>14,.0f}", flush=True)


if __name__ == "__main__":
    main()
