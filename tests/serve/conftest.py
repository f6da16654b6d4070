"""Fixtures for the export and serving tests: one encoder, one run directory per registered model."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from serve_fixtures import fit_encoder, make_raw, make_run


@pytest.fixture(scope="session")
def encoder():
    return fit_encoder()


@pytest.fixture(scope="session")
def serve_root(tmp_path_factory, encoder) -> Path:
    root = tmp_path_factory.mktemp("serve")
    pq.write_table(make_raw(400, seed=1), root / "train.parquet")
    return root


@pytest.fixture(scope="session")
def run_dirs(serve_root, encoder):
    """`run_dirs(name)`: a run directory for model `name` (built once per session)."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = make_run(name, encoder, serve_root / f"run-{name}", serve_root / "train.parquet")
        return cache[name]

    return get


@pytest.fixture(scope="session")
def ml_csv(ml100k_dir, tmp_path_factory) -> Path:
    """A user's own CSV data: MovieLens 100K's seeded split written as train/val/test CSV files, and a small
    dnn trained on them in `runs/ml-dnn` (the folder holds both)."""
    import pyarrow.csv as pacsv

    import msrec
    from msrec.config import parse_config
    from msrec.data.prepare import load_splits

    root = tmp_path_factory.mktemp("ml-csv")
    cfg = parse_config({"data": {"dataset": "movielens-100k", "path": str(ml100k_dir)}, "model": {"name": "dnn"}})
    raw = load_splits(cfg.data, 2022)
    for split, table in raw.tables.items():
        pacsv.write_csv(table, root / f"{split}.csv")
    s = raw.schema
    data = {split: str(root / f"{split}.csv") for split in raw.tables}
    msrec.train({"data": {**data, "sparse": s.sparse, "dense": s.dense, "scenario": s.scenario, "labels": s.labels},
                 "model": {"name": "dnn", "embed_dim": 4, "mlp": {"hidden": [16]}},
                 "train": {"epochs": 1, "batch_size": 4096, "progress": False, "seed": 1}},
                out=root / "runs" / "ml-dnn")
    return root
