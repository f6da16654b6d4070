"""AliExpress (Alibaba's cross-country search log): one folder per country, the release's own train/test split."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from msrec.data.datasets import Loaded, register
from msrec.data.datasets.common import ScenarioOptions, fill_missing_ids, keep_scenarios, require
from msrec.data.io import read_table
from msrec.errors import MsrecError

ALIEXPRESS_LABELS = ["click", "conversion"]
_COUNTRY_DIR = re.compile(r"^aliexpress_(.+)$", re.IGNORECASE)


def _country(folder: Path) -> str:
    match = _COUNTRY_DIR.match(folder.name)
    return match.group(1) if match else folder.name


def _split_file(folder: Path, split: str) -> Path | None:
    exact = folder / f"{split}.csv"
    if exact.is_file():
        return exact
    found = sorted(f for f in folder.glob(f"*{split}*.csv") if f.is_file())
    if len(found) > 1:
        raise MsrecError(f"aliexpress: several *{split}*.csv files in {folder} "
                         f"({', '.join(f.name for f in found)}); keep one per country folder")
    return found[0] if found else None


def _with_country(table: pa.Table, country: str) -> pa.Table:
    return table.append_column("country", pa.repeat(pa.scalar(country, pa.string()), table.num_rows))


@register("aliexpress", "AliExpress, AliExpress_XX/train.csv,test.csv per country (click, conversion; "
          "scenario = country)", ScenarioOptions)
def load(path: str | None, options: ScenarioOptions) -> Loaded:
    """AliExpress (Alibaba's cross-country search log, used by MMoE/PLE/M2M-style papers).

    `data.path` is the folder holding the country folders (`AliExpress_NL/train.csv, test.csv`, ...), one
    country folder, or one CSV file. Scenario = the country: the country folder's name without its
    `AliExpress_` prefix (any other folder's own name), added as the column `country` - the rows
    themselves do not say their country. Labels: `click` and `conversion` (a two-task dataset). Features:
    the 16 `categorical_*` columns (sparse) and the 63 `numerical_*` columns (dense); `search_id` is a
    query-session key, not a feature. The release's own train/test split is kept; msrec carves the
    validation split out of train.
    """
    wanted = options.scenarios
    if not path:
        raise MsrecError("aliexpress: set data.path to the folder holding the AliExpress_XX country folders")
    root = Path(path)
    if not root.exists():
        raise MsrecError(f"aliexpress: data.path {root} does not exist (expected the folder holding the "
                         "AliExpress_XX country folders, each with train.csv and test.csv)")
    if root.is_file():  # one file: the whole data of one country, split by msrec
        table = read_table(root)
        table = fill_missing_ids(table, [c for c in table.column_names if c.startswith("categorical_")])
        table = _with_country(table, _country(root.parent))
        return {"all": keep_scenarios(table, "country", wanted, root)}, _aliexpress_defaults(table, root)
    folders = sorted(d for d in root.iterdir() if d.is_dir() and _COUNTRY_DIR.match(d.name)) or [root]
    if wanted is not None:
        countries = {_country(d): d for d in folders}
        absent = [c for c in wanted if c not in countries]
        if absent:
            raise MsrecError(f"data.options.scenarios: no country folder for {absent} in {root} "
                             f"(countries: {sorted(countries)})")
        folders = [countries[c] for c in wanted]
    splits: dict[str, list[pa.Table]] = {"train": [], "test": []}
    for folder in folders:
        files = {split: _split_file(folder, split) for split in splits}
        if files["train"] is None or files["test"] is None:
            lacking = " and ".join(f"{s}.csv" for s, f in files.items() if f is None)
            where = f"{folder} lacks {lacking}" if folder != root else \
                f"{root} holds no AliExpress_XX country folders and lacks {lacking}"
            raise MsrecError(f"aliexpress: {where} (expected AliExpress_XX/train.csv and test.csv)")
        for split, file in files.items():
            table = read_table(file)
            table = fill_missing_ids(table, [c for c in table.column_names if c.startswith("categorical_")])
            splits[split].append(_with_country(table, _country(folder)))
    try:
        tables = {split: pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
                  for split, parts in splits.items()}
    except (pa.ArrowTypeError, pa.ArrowInvalid) as err:  # e.g. a column read as numbers in one country, text in another
        raise MsrecError(f"aliexpress: the country folders in {root} do not agree on their columns' types "
                         f"({str(err).splitlines()[0]})") from None
    return tables, _aliexpress_defaults(tables["train"], root)


def _aliexpress_defaults(table: pa.Table, source: Path) -> dict[str, Any]:
    require(table, ALIEXPRESS_LABELS, source, "AliExpress")
    sparse = [c for c in table.column_names if c.startswith("categorical_")]
    dense = [c for c in table.column_names if c.startswith("numerical_")]
    if not sparse and not dense:
        raise MsrecError(f"{source}: no categorical_* or numerical_* columns, which the AliExpress layout has "
                         f"(columns: {', '.join(table.column_names)})")
    return {"sparse": sparse, "dense": dense, "lists": {}, "scenario": "country", "labels": list(ALIEXPRESS_LABELS),
            "user": None}
