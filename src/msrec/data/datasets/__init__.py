"""Built-in datasets: a name -> a loader that returns raw arrow tables plus the schema defaults.

A loader returns either {"all": table} (split later, seeded) or {"train": ..., "val": ..., "test": ...}
when the dataset ships its own split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import ValidationError

from msrec.data.datasets import movielens, public, synthetic
from msrec.data.io import read_table
from msrec.errors import MsrecError, first_problem


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    description: str
    load: Callable[[str | None, dict[str, Any]], tuple[dict[str, pa.Table], dict[str, Any]]]


def _synthetic(path: str | None, options: dict[str, Any]):
    try:
        opts = synthetic.SyntheticOptions(**options)
    except ValidationError as err:
        where, unknown, message = first_problem(err)
        raise MsrecError(f"data.options{'.' if where else ''}{where}: {'unknown option' if unknown else message}") from None
    return {"all": synthetic.generate(opts)}, synthetic.defaults(opts)


def _no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise MsrecError(f"data.options: dataset {name} takes no options, got {sorted(options)}")


def _ml100k(path: str | None, options: dict[str, Any]):
    _no_options("movielens-100k", options)
    return {"all": movielens.load_100k(path)}, dict(movielens.DEFAULTS)


def _ml1m(path: str | None, options: dict[str, Any]):
    _no_options("movielens-1m", options)
    return {"all": movielens.load_1m(path)}, dict(movielens.DEFAULTS)


def _ali_ccp(path: str | None, options: dict[str, Any]):
    """Ali-CCP in the common CTR-toolkit CSV layout: one file per split whose name holds train/val/test."""
    _no_options("ali-ccp", options)
    if not path:
        raise MsrecError("ali-ccp: set data.path to the folder holding the train/val/test CSV files")
    folder = Path(path)
    splits = {}
    for split in ("train", "val", "test"):
        found = sorted(folder.glob(f"*{split}*.csv"))
        if found:
            splits[split] = read_table(found[0], string_columns=[])
    if "train" not in splits:
        raise MsrecError(f"ali-ccp: no *train*.csv in {folder}")
    names = splits["train"].column_names
    dense = [c for c in names if c.startswith("D")]
    sparse = [c for c in names if c not in dense and c not in ("click", "purchase")]
    return splits, {"sparse": sparse, "dense": dense, "lists": {}, "scenario": "301",
                    "labels": ["click", "purchase"], "user": "101"}


DATASETS: dict[str, BuiltinDataset] = {
    d.name: d
    for d in [
        BuiltinDataset("synthetic", "Generated multi-scenario clicks (and conversions) with a known truth; "
                       "options: rows, scenarios, shares, users, items, tasks, latent_dim, heterogeneity, zipf, seed, "
                       "row_seed", _synthetic),
        BuiltinDataset("movielens-100k", "MovieLens 100K (GroupLens u.data/u.user/u.item), scenario = age group",
                       _ml100k),
        BuiltinDataset("movielens-1m", "MovieLens 1M (GroupLens ratings.dat/users.dat/movies.dat), "
                       "scenario = age group", _ml1m),
        BuiltinDataset("ali-ccp", "Ali-CCP CSV layout (click, purchase; field 301 = scenario)", _ali_ccp),
        BuiltinDataset("aliexpress", "AliExpress, AliExpress_XX/train.csv,test.csv per country (click, conversion; "
                       "scenario = country); options: scenarios", public.aliexpress),
        BuiltinDataset("kuairand", "KuaiRand-1K impressions with user/video features (is_click; scenario = tab); "
                       "options: scenarios", public.kuairand),
        BuiltinDataset("douban", "Douban book/music/movie ratings (0/1 rating; scenario = domain); options: scenarios",
                       public.douban),
        BuiltinDataset("mind", "MIND news impressions (label; scenario = Category); options: scenarios", public.mind),
    ]
}


def load_builtin(name: str, path: str | None, options: dict[str, Any]):
    if name not in DATASETS:
        raise MsrecError(f"data.dataset: unknown dataset `{name}` (known: {', '.join(DATASETS)})")
    return DATASETS[name].load(path, options)
