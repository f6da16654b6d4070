"""Ali-CCP (Alibaba click and conversion prediction) in the common CTR-toolkit CSV layout."""

from __future__ import annotations

from pathlib import Path

from msrec.data.datasets import DatasetOptions, Loaded, register
from msrec.data.io import read_table
from msrec.errors import MsrecError


@register("ali-ccp", "Ali-CCP CSV layout (click, purchase; field 301 = scenario)")
def load(path: str | None, options: DatasetOptions) -> Loaded:
    """One file per split whose name holds train/val/test. Scenario = field `301`; labels `click` and
    `purchase`; `D*` columns dense, every other field sparse; user = field `101`."""
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
