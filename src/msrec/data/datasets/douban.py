"""Douban ratings of books, music and movies by the same users, one CSV (the Scenario-Wise Rec layout)."""

from __future__ import annotations

from msrec.data.datasets import Loaded, register
from msrec.data.datasets.common import ScenarioOptions, fill_missing_ids, find_file, keep_scenarios, require
from msrec.data.io import read_table


@register("douban", "Douban book/music/movie ratings (0/1 rating; scenario = domain)", ScenarioOptions)
def load(path: str | None, options: ScenarioOptions) -> Loaded:
    """Douban ratings of books, music and movies by the same users (`douban*.csv`).

    Scenario = `domain` (book, music, movie); label = `rating`, already 0/1 in this layout (1 = more than
    3 stars of 5); user = `user_id`. Sparse: user_id, item_id (the layout offsets each domain's item ids,
    so they do not overlap) and living_place (an empty place becomes the value "unknown"). Dense:
    time_bin, the month the user joined as a month index, an ordered quantity - the same information as
    join_time, which is left out (a date, and redundant).
    """
    wanted = options.scenarios
    file = find_file("douban", path, "douban*.csv")
    table = read_table(file, string_columns=["living_place", "domain"])
    require(table, ["user_id", "item_id", "rating", "domain", "living_place", "time_bin"], file, "Douban")
    table = fill_missing_ids(keep_scenarios(table, "domain", wanted, file), ["living_place"])
    return {"all": table}, {"sparse": ["user_id", "item_id", "living_place"], "dense": ["time_bin"], "lists": {},
                            "scenario": "domain", "labels": ["rating"], "user": "user_id"}
