"""MIND (Microsoft News) impressions, one CSV (the Scenario-Wise Rec layout)."""

from __future__ import annotations

from msrec.data.datasets import Loaded, register
from msrec.data.datasets.common import ScenarioOptions, fill_missing_ids, find_file, keep_scenarios, require
from msrec.data.io import read_table


@register("mind", "MIND news impressions (label; scenario = Category)", ScenarioOptions)
def load(path: str | None, options: ScenarioOptions) -> Loaded:
    """MIND (Microsoft News) impressions: one row per news shown to a user (`mind*.csv`).

    Scenario = `Category`, the news section (news, sports, finance, lifestyle, ...); label = `label`
    (clicked or not); user = `User_ID`. Sparse: User_ID, News_ID, SubCategory. The layout has no other
    columns, so nothing is excluded.
    """
    wanted = options.scenarios
    file = find_file("mind", path, "mind*.csv")
    table = read_table(file, string_columns=["User_ID", "News_ID", "Category", "SubCategory"])
    require(table, ["User_ID", "News_ID", "label", "Category", "SubCategory"], file, "MIND")
    table = fill_missing_ids(keep_scenarios(table, "Category", wanted, file), ["SubCategory"])
    return {"all": table}, {"sparse": ["User_ID", "News_ID", "SubCategory"], "dense": [], "lists": {},
                            "scenario": "Category", "labels": ["label"], "user": "User_ID"}
