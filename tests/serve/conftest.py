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
