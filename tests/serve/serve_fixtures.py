"""Tiny raw data, an encoder fitted on it, and run directories for any registered model (serve tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from msrec.config import parse_config
from msrec.data.encode import Encoder
from msrec.errors import MsrecError
from msrec.models.registry import build_model, parse_options
from msrec.runs import write_run
from msrec.schema import Schema

SCENARIOS = ["home", "search", "cart"]
TIERS = ["new", "low", "mid", "high"]
SCHEMA = {"sparse": ["user_id", "item_id", "zip"], "dense": ["price", "age"], "lists": {"tags": "|"},
          "scenario": "page", "scenario_features": ["page", "tier"], "labels": ["click", "buy"]}
SMALL_OPTIONS = {"embed_dim": 4, "hidden": [16, 8]}


def make_raw(n: int, seed: int = 0, scenarios: list[str] | None = None, with_labels: bool = True) -> pa.Table:
    """Raw rows as in a training file: integer and text ids, a multi-hot text list, dense values with gaps.
    Ids up to 1.5x the training range, so some rows hold ids the encoder has never seen."""
    rng = np.random.default_rng(seed)
    pages = scenarios or SCENARIOS
    price = rng.gamma(2.0, 10.0, n)
    price[rng.random(n) < 0.1] = np.nan
    tags = ["|".join(f"t{k}" for k in rng.choice(12, rng.integers(0, 4), replace=False)) for _ in range(n)]
    cols = {
        "user_id": rng.integers(1, 60, n), "item_id": rng.integers(1000, 1045, n),
        "zip": [f"{z:05d}" for z in rng.integers(10000, 10030, n)], "tier": rng.choice(TIERS, n),
        "price": pa.array(price, from_pandas=True), "age": rng.integers(16, 70, n).astype(float),
        "tags": tags, "page": rng.choice(pages, n),
    }
    if with_labels:
        cols["click"] = rng.integers(0, 2, n)
        cols["buy"] = cols["click"] * rng.integers(0, 2, n)
    return pa.table(cols)


def fit_encoder() -> Encoder:
    return Encoder(Schema(**SCHEMA)).fit(make_raw(400, seed=1), "train")


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every weight off its initial value, so that scenario-specific parameters that start equal
    (ones, zeros, uniform gates) differ and a row routed to the wrong scenario changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.2)


def make_run(name: str, encoder: Encoder, path: Path, train_file: Path) -> Path:
    """A run directory for model `name` with small (or, if it rejects them, default) options."""
    try:
        options = parse_options(name, SMALL_OPTIONS).model_dump()
    except MsrecError:
        options = {}
    config = parse_config({"data": {"train": str(train_file), **SCHEMA}, "model": {"name": name, **options},
                           "train": {"epochs": 1, "progress": False}})
    torch.manual_seed(0)
    model = build_model(name, encoder.spec(), options)
    perturb(model)
    model.eval()
    return write_run(path, config, encoder, model, {"model": name})
