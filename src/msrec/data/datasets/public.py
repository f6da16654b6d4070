"""Public multi-scenario datasets, read from the CSV layouts they are distributed in: AliExpress (one folder
per country), and KuaiRand, Douban and MIND as one CSV each (the layout of the Scenario-Wise Rec benchmark).

Each loader takes `data.path` (the file, or the folder holding it) and one option, `scenarios`: keep only
the rows of these scenario values (e.g. KuaiRand's largest tabs, or some AliExpress countries).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from msrec.data.encode import written_out_missing
from msrec.data.io import read_table
from msrec.errors import MsrecError

Tables = dict[str, pa.Table]
Loaded = tuple[Tables, dict[str, Any]]


# ----------------------------------------------------------------------------------------------- helpers


def _scenarios_option(name: str, options: dict[str, Any]) -> list[str] | None:
    """The `scenarios` option as text (compared with the scenario column's values as text), or None."""
    unknown = sorted(set(options) - {"scenarios"})
    if unknown:
        raise MsrecError(f"data.options: dataset {name} takes only `scenarios`, got {unknown}")
    wanted = options.get("scenarios")
    if wanted is None:
        return None
    if not isinstance(wanted, list) or not wanted or not all(isinstance(v, (str, int)) for v in wanted):
        raise MsrecError(f"data.options.scenarios: a non-empty list of scenario values, got {wanted!r}")
    return list(dict.fromkeys(str(v) for v in wanted))  # a value named twice is still loaded once


def _keep_scenarios(table: pa.Table, column: str, wanted: list[str] | None, source: Path) -> pa.Table:
    if wanted is None:
        return table
    values = pc.cast(table[column], pa.string())
    kept = table.filter(pc.is_in(values, value_set=pa.array(wanted)))
    if kept.num_rows == 0:
        present = sorted(pc.unique(values).to_pylist())
        raise MsrecError(f"data.options.scenarios: none of {wanted} in column `{column}` of {source} "
                         f"(values: {present})")
    return kept


def _find_file(name: str, path: str | None, pattern: str) -> Path:
    """`data.path` as a file, or the one file matching `pattern` in the folder it names."""
    if not path:
        raise MsrecError(f"{name}: set data.path to the {pattern} file or the folder holding it")
    p = Path(path)
    if not p.exists():
        raise MsrecError(f"{name}: data.path {p} does not exist (expected the {pattern} file or its folder)")
    if p.is_file():
        return p
    found = sorted(f for f in p.glob(pattern) if f.is_file())
    if not found:
        raise MsrecError(f"{name}: no {pattern} file in {p}")
    if len(found) > 1:
        raise MsrecError(f"{name}: several {pattern} files in {p} ({', '.join(f.name for f in found)}); "
                         "give data.path the one to use")
    return found[0]


def _require(table: pa.Table, columns: list[str], source: Path, name: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise MsrecError(f"{source}: missing column `{missing[0]}`, which the {name} layout has "
                         f"(columns: {', '.join(table.column_names)})")


def _fill_missing_ids(table: pa.Table, columns: list[str], text: str = "unknown", number: int = -1) -> pa.Table:
    """A missing categorical value (null, NaN, an empty cell) becomes a value of its own: for these
    datasets "not known" is a category, not an error. Integral float columns (ids written as 3.0 by
    pandas after a join) become integers."""
    for name in columns:
        col = table[name]
        if pa.types.is_floating(col.type):
            col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
            filled = pc.fill_null(col, float(number))
            col = pc.cast(filled, pa.int64()) if pc.all(pc.equal(pc.floor(filled), filled)).as_py() else filled
        elif pa.types.is_integer(col.type):
            col = pc.fill_null(col, number)
        elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            blank = written_out_missing(col)
            missing = pc.is_null(col) if blank is None else pc.or_kleene(pc.is_null(col), blank)
            col = pc.if_else(missing, pa.scalar(text, col.type), col)
        table = table.set_column(table.column_names.index(name), name, col)
    return table


# ---------------------------------------------------------------------------------------------- AliExpress

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


def aliexpress(path: str | None, options: dict[str, Any]) -> Loaded:
    """AliExpress (Alibaba's cross-country search log, used by MMoE/PLE/M2M-style papers).

    `data.path` is the folder holding the country folders (`AliExpress_NL/train.csv, test.csv`, ...), one
    country folder, or one CSV file. Scenario = the country: the country folder's name without its
    `AliExpress_` prefix (any other folder's own name), added as the column `country` - the rows
    themselves do not say their country. Labels: `click` and `conversion` (a two-task dataset). Features:
    the 16 `categorical_*` columns (sparse) and the 63 `numerical_*` columns (dense); `search_id` is a
    query-session key, not a feature. The release's own train/test split is kept; msrec carves the
    validation split out of train.
    """
    wanted = _scenarios_option("aliexpress", options)
    if not path:
        raise MsrecError("aliexpress: set data.path to the folder holding the AliExpress_XX country folders")
    root = Path(path)
    if not root.exists():
        raise MsrecError(f"aliexpress: data.path {root} does not exist (expected the folder holding the "
                         "AliExpress_XX country folders, each with train.csv and test.csv)")
    if root.is_file():  # one file: the whole data of one country, split by msrec
        table = read_table(root)
        table = _fill_missing_ids(table, [c for c in table.column_names if c.startswith("categorical_")])
        table = _with_country(table, _country(root.parent))
        return {"all": _keep_scenarios(table, "country", wanted, root)}, _aliexpress_defaults(table, root)
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
            table = _fill_missing_ids(table, [c for c in table.column_names if c.startswith("categorical_")])
            splits[split].append(_with_country(table, _country(folder)))
    try:
        tables = {split: pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
                  for split, parts in splits.items()}
    except (pa.ArrowTypeError, pa.ArrowInvalid) as err:  # e.g. a column read as numbers in one country, text in another
        raise MsrecError(f"aliexpress: the country folders in {root} do not agree on their columns' types "
                         f"({str(err).splitlines()[0]})") from None
    return tables, _aliexpress_defaults(tables["train"], root)


def _aliexpress_defaults(table: pa.Table, source: Path) -> dict[str, Any]:
    _require(table, ALIEXPRESS_LABELS, source, "AliExpress")
    sparse = [c for c in table.column_names if c.startswith("categorical_")]
    dense = [c for c in table.column_names if c.startswith("numerical_")]
    if not sparse and not dense:
        raise MsrecError(f"{source}: no categorical_* or numerical_* columns, which the AliExpress layout has "
                         f"(columns: {', '.join(table.column_names)})")
    return {"sparse": sparse, "dense": dense, "lists": {}, "scenario": "country", "labels": list(ALIEXPRESS_LABELS),
            "user": None}


# ------------------------------------------------------------------------------------------------ KuaiRand

KUAIRAND_SPARSE = ["user_id", "video_id", "user_active_degree", "is_lowactive_period", "is_live_streamer",
                   "is_video_author", "follow_user_num_range", "fans_user_num_range", "friend_user_num_range",
                   "register_days_range", *[f"onehot_feat{i}" for i in range(18)], "video_type"]
KUAIRAND_DENSE = ["follow_user_num", "fans_user_num", "friend_user_num", "register_days", "duration_ms",
                  "server_width", "server_height"]
# Recorded after the impression: how the user reacted (the outcome or its consequences), or the video's
# state when the data was exported. Never features, whatever the file holds.
KUAIRAND_EXCLUDED = ["play_time_ms", "profile_stay_time", "comment_stay_time", "visible_status",
                     "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view",
                     "is_profile_enter"]


def kuairand(path: str | None, options: dict[str, Any]) -> Loaded:
    """KuaiRand-1K impressions joined with user and video features (`kuairand*.csv`).

    Scenario = `tab`, the app page the video was shown on; label = `is_click`; user = `user_id`. Sparse:
    the user and video ids and the categorical user/video features (activity degree, the is_* flags, the
    *_range buckets, onehot_feat0-17, video_type); dense: the user profile's counts (follow, fans and
    friend counts, register_days) and the video's shape (duration_ms, server_width/height). The profile
    features are the release's snapshot of each user, not measured per impression; they are user
    attributes, not reactions to the impression, so they stay (as in the published benchmarks).

    Excluded, as they leak the outcome: play_time_ms (how long the user watched: a consequence of the
    click), profile_stay_time and comment_stay_time (time spent on the author's profile / the comments
    after engaging), and the other feedback signals of the full logs (is_like, is_follow, is_comment,
    is_forward, is_hate, long_view, is_profile_enter) when a file has them. visible_status is left out as
    well: it is the video's state when the data was exported, after the impression (and constant in the
    sample). Features are an allow-list, so no other column of the file becomes one.
    """
    wanted = _scenarios_option("kuairand", options)
    file = _find_file("kuairand", path, "kuairand*.csv")
    table = read_table(file)
    _require(table, ["user_id", "video_id", "is_click", "tab"], file, "KuaiRand")
    sparse = [c for c in KUAIRAND_SPARSE if c in table.column_names]
    dense = [c for c in KUAIRAND_DENSE if c in table.column_names]
    categorical = [c for c in sparse if c not in ("user_id", "video_id")]  # a missing id stays an error
    table = _fill_missing_ids(_keep_scenarios(table, "tab", wanted, file), categorical)
    return {"all": table}, {"sparse": sparse, "dense": dense, "lists": {}, "scenario": "tab",
                            "labels": ["is_click"], "user": "user_id"}


# -------------------------------------------------------------------------------------------------- Douban

def douban(path: str | None, options: dict[str, Any]) -> Loaded:
    """Douban ratings of books, music and movies by the same users (`douban*.csv`).

    Scenario = `domain` (book, music, movie); label = `rating`, already 0/1 in this layout (1 = more than
    3 stars of 5); user = `user_id`. Sparse: user_id, item_id (the layout offsets each domain's item ids,
    so they do not overlap) and living_place (an empty place becomes the value "unknown"). Dense:
    time_bin, the month the user joined as a month index, an ordered quantity - the same information as
    join_time, which is left out (a date, and redundant).
    """
    wanted = _scenarios_option("douban", options)
    file = _find_file("douban", path, "douban*.csv")
    table = read_table(file, string_columns=["living_place", "domain"])
    _require(table, ["user_id", "item_id", "rating", "domain", "living_place", "time_bin"], file, "Douban")
    table = _fill_missing_ids(_keep_scenarios(table, "domain", wanted, file), ["living_place"])
    return {"all": table}, {"sparse": ["user_id", "item_id", "living_place"], "dense": ["time_bin"], "lists": {},
                            "scenario": "domain", "labels": ["rating"], "user": "user_id"}


# ---------------------------------------------------------------------------------------------------- MIND

def mind(path: str | None, options: dict[str, Any]) -> Loaded:
    """MIND (Microsoft News) impressions: one row per news shown to a user (`mind*.csv`).

    Scenario = `Category`, the news section (news, sports, finance, lifestyle, ...); label = `label`
    (clicked or not); user = `User_ID`. Sparse: User_ID, News_ID, SubCategory. The layout has no other
    columns, so nothing is excluded.
    """
    wanted = _scenarios_option("mind", options)
    file = _find_file("mind", path, "mind*.csv")
    table = read_table(file, string_columns=["User_ID", "News_ID", "Category", "SubCategory"])
    _require(table, ["User_ID", "News_ID", "label", "Category", "SubCategory"], file, "MIND")
    table = _fill_missing_ids(_keep_scenarios(table, "Category", wanted, file), ["SubCategory"])
    return {"all": table}, {"sparse": ["User_ID", "News_ID", "SubCategory"], "dense": [], "lists": {},
                            "scenario": "Category", "labels": ["label"], "user": "User_ID"}
