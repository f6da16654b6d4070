"""Ingest speed: reading and encoding CSV / Parquet into tensor tables, rows per second.

A MovieLens-like schema (user and item ids, two categorical side features, two dense values, the
scenario, a 0/1 label) from the synthetic generator, written once as CSV and as Parquet. For each format,
the median of `--repeats` runs of `msrec.api.prepare_data`, the whole path `msrec train` takes before
training: read (pyarrow), validate every row, the seeded train/val/test split, encoder fit on the training
split, encoding of all three splits. The read alone is timed beside it.

    python benchmarks/ingest.py [--rows 2000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from msrec.api import as_config, prepare_data
from msrec.data.datasets import synthetic
from msrec.data.io import read_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    d = synthetic.defaults(synthetic.SyntheticOptions())
    columns = [*d["sparse"], *d["dense"], "scenario", "click"]
    table = synthetic.generate(rows=args.rows).select(columns)
    with tempfile.TemporaryDirectory() as tmp:
        files = {"parquet": Path(tmp) / "data.parquet", "csv": Path(tmp) / "data.csv"}
        pq.write_table(table, files["parquet"])
        pacsv.write_csv(table, files["csv"])
        print(f"{args.rows:,} rows, median of {args.repeats}")
        print(f"{'format':<10}{'read s':>8}{'total s':>9}{'rows/s':>14}")
        for fmt, path in files.items():
            cfg = as_config({"data": {"train": str(path), "sparse": d["sparse"], "dense": d["dense"],
                                      "scenario": "scenario", "labels": ["click"]}})
            reads, totals = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                read_table(path, string_columns=[*d["sparse"], "scenario"])
                reads.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                data = prepare_data(cfg)
                totals.append(time.perf_counter() - t0)
                assert len(data.train) + sum(len(t) for t in data.evaluation_splits().values()) == args.rows
            read, total = statistics.median(reads), statistics.median(totals)
            print(f"{fmt:<10}{read:>8.2f}{total:>9.2f}{args.rows / total:>14,.0f}", flush=True)


if __name__ == "__main__":
    main()
