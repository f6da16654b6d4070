"""Shared fixtures: where the real data lives, MovieLens 100K in GroupLens's own layout, a small synthetic
CSV with a config over it, and the `msrec` command run in-process."""

from __future__ import annotations

import copy
import io
import sys
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # never copied into the repository (licences)

SYNTHETIC_FEATURES = {"sparse": ["user_id", "item_id", "user_group", "item_category"],
                      "dense": ["user_activity", "item_price"], "scenario": "scenario", "labels": ["click"],
                      "user": "user_id"}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"real test data expected at {SHARED_DATA} (../shared/data from the repo root)"
    return SHARED_DATA


@pytest.fixture(scope="session")
def ml100k_dir(shared_data, tmp_path_factory) -> Path:
    """MovieLens 100K as GroupLens ships it (u.data, u.user, u.item), built from the Parquet copies so that
    tests read it through the real reader."""
    from msrec.data.datasets.movielens import write_100k_layout

    src = shared_data / "movielens-100k"
    tables = [pq.read_table(src / f"MovieLens100k_{part}.parquet.brotli") for part in ("data", "users", "items")]
    return write_100k_layout(*tables, tmp_path_factory.mktemp("ml-100k"))


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory) -> Path:
    """3,000 synthetic rows (3 scenarios, known truth in `p_click`) as a CSV file."""
    from msrec.data.datasets import synthetic

    path = tmp_path_factory.mktemp("synthetic") / "train.csv"
    pacsv.write_csv(synthetic.generate(rows=3000, users=300, items=200, seed=7), path)
    return path


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture(scope="session")
def synthetic_config(synthetic_csv) -> Callable[..., dict]:
    """`make(**sections)`: a fast config (tiny dnn, one epoch) over `synthetic_csv`; keyword sections are
    merged in, e.g. `make(train={"epochs": 2}, data={"train": other_path})`."""

    def make(**sections: dict) -> dict:
        base = {"data": {"train": str(synthetic_csv), **SYNTHETIC_FEATURES},
                "model": {"name": "dnn", "embed_dim": 4, "hidden": [16]},
                "train": {"epochs": 1, "batch_size": 512, "progress": False, "seed": 1}}
        return deep_merge(base, sections)

    return make


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_msrec(*args: str | Path) -> CliResult:
    """`msrec ARGS...` in-process through the console script's own entry point (`msrec.cli.main`): its exit
    code and what it printed. An exception that `main` lets through propagates (a traceback for the user)."""
    from msrec.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["msrec", *map(str, args)]
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def cli() -> Callable[..., CliResult]:
    """The `msrec` command, run in-process: `cli("train", config_path, "--out", run_dir)`."""
    return run_msrec
