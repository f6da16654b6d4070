"""Built-in public datasets (AliExpress, KuaiRand, Douban, MIND) read from their own CSV layouts.

The samples in ../shared/data/samples are format fixtures: they prove the loaders read the real layouts
and that training runs end to end, not anything about model quality."""

from __future__ import annotations

import math
import re
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest

import msrec
from msrec.data.datasets import DATASETS, list_datasets, load_builtin
from msrec.data.datasets.kuairand import KUAIRAND_EXCLUDED
from msrec.errors import MsrecError

NAMES = ["aliexpress", "kuairand", "douban", "mind"]
EXPECTED = {  # dataset -> (scenario values in the sample, labels, sparse count, dense count)
    "aliexpress": ({"aliexpress"}, ["click", "conversion"], 16, 63),
    "kuairand": ({1}, ["is_click"], 29, 7),
    "douban": ({"book", "music", "movie"}, ["rating"], 3, 1),
    "mind": ({"news", "lifestyle", "sports", "finance"}, ["label"], 3, 0),
}


@pytest.fixture(scope="module")
def samples(shared_data):
    return shared_data / "samples"


def _rows(tables: dict[str, pa.Table]) -> pa.Table:
    return pa.concat_tables(tables.values())


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_a_description(name):
    assert name in DATASETS and DATASETS[name].description.endswith("; options: scenarios")


def test_every_dataset_is_listed_and_options_are_typed():
    assert [d.name for d in list_datasets()] == ["synthetic", "movielens-100k", "movielens-1m", "ali-ccp", *NAMES]
    with pytest.raises(MsrecError, match=r"^data.options: unknown option `rows` for dataset ali-ccp \(options: none\)$"):
        load_builtin("ali-ccp", "x", {"rows": 1})
    with pytest.raises(MsrecError, match=r"^data.options.scenarios: Input should be a valid list"):
        load_builtin("douban", "x", {"scenarios": "book"})
    with pytest.raises(MsrecError, match=r"^data.dataset: unknown dataset `nope` \(known: synthetic, "):
        load_builtin("nope", None, {})


@pytest.mark.parametrize("name", NAMES)
def test_sample_loads_with_its_scenarios_labels_and_features(name, samples):
    tables, defaults = load_builtin(name, str(samples / name), {})
    scenarios, labels, n_sparse, n_dense = EXPECTED[name]
    table = _rows(tables)
    assert set(pc.unique(table[defaults["scenario"]]).to_pylist()) == scenarios
    assert defaults["labels"] == labels
    for label in labels:
        assert set(pc.unique(table[label]).to_pylist()) <= {0, 1}
        assert table[label].null_count == 0
    assert (len(defaults["sparse"]), len(defaults["dense"])) == (n_sparse, n_dense)
    features = [*defaults["sparse"], *defaults["dense"]]
    assert set(features) <= set(table.column_names)
    assert not set(features) & set(labels)
    assert defaults["user"] is None or defaults["user"] in defaults["sparse"]


def test_aliexpress_keeps_the_release_split_and_drops_search_id(samples):
    tables, defaults = load_builtin("aliexpress", str(samples / "aliexpress"), {})
    assert set(tables) == {"train", "test"}  # msrec carves val out of train
    assert (tables["train"].num_rows, tables["test"].num_rows) == (100, 20)
    assert "search_id" not in defaults["sparse"] + defaults["dense"]
    assert defaults["sparse"] == [f"categorical_{i}" for i in range(1, 17)]
    assert defaults["dense"] == [f"numerical_{i}" for i in range(1, 64)]


def test_kuairand_features_leak_nothing(samples):
    tables, defaults = load_builtin("kuairand", str(samples / "kuairand"), {})
    features = {*defaults["sparse"], *defaults["dense"]}
    assert not features & set(KUAIRAND_EXCLUDED)
    for leak in ("play_time_ms", "profile_stay_time", "comment_stay_time"):
        assert leak in tables["all"].column_names and leak not in features
    assert {"user_id", "video_id", "user_active_degree", "onehot_feat0", "video_type"} <= set(defaults["sparse"])
    assert {"follow_user_num", "fans_user_num", "friend_user_num", "register_days"} <= set(defaults["dense"])
    assert (defaults["scenario"], defaults["user"]) == ("tab", "user_id")


def test_douban_fills_empty_places_and_leaves_join_time_out(samples):
    tables, defaults = load_builtin("douban", str(samples / "douban"), {})
    places = tables["all"]["living_place"]
    assert "" not in pc.unique(places).to_pylist() and "unknown" in pc.unique(places).to_pylist()
    assert "join_time" not in defaults["sparse"] + defaults["dense"]
    assert defaults["dense"] == ["time_bin"]


@pytest.mark.parametrize("name", NAMES)
def test_trains_end_to_end_on_the_sample(name, samples):
    result = msrec.train({"data": {"dataset": name, "path": str(samples / name)},
                          "model": {"name": "dnn", "hidden": [8]},
                          "train": {"epochs": 1, "batch_size": 256, "progress": False}}, save=False)
    val = result.metrics["val"]
    blocks = list(val["tasks"].values()) if "tasks" in val else [val]
    assert blocks
    for block in blocks:
        overall = block["overall"]
        assert overall["rows"] > 0 and math.isfinite(overall["logloss"])
        if 0 < overall["positives"] < overall["rows"]:  # a split of the tiny sample may hold one class
            assert math.isfinite(overall["auc"])
    assert math.isfinite(val["overall"]["auc"])  # click (or the only task) has both classes in every sample


def test_aliexpress_country_folders_are_the_scenarios(samples, tmp_path):
    for country in ("NL", "US"):
        folder = tmp_path / f"AliExpress_{country}"
        folder.mkdir()
        shutil.copy(samples / "aliexpress" / "aliexpress_train_sample.csv", folder / "train.csv")
        shutil.copy(samples / "aliexpress" / "aliexpress_test_sample.csv", folder / "test.csv")
    tables, defaults = load_builtin("aliexpress", str(tmp_path), {})
    assert defaults["scenario"] == "country"
    for split, rows in (("train", 100), ("test", 20)):
        counts = pc.value_counts(tables[split]["country"]).to_pylist()
        assert {c["values"]: c["counts"] for c in counts} == {"NL": rows, "US": rows}
    only, _ = load_builtin("aliexpress", str(tmp_path), {"scenarios": ["US", "US"]})  # named twice, loaded once
    assert pc.value_counts(only["train"]["country"]).to_pylist() == [{"values": "US", "counts": 100}]
    # one country folder given directly
    tables, _ = load_builtin("aliexpress", str(tmp_path / "AliExpress_NL"), {})
    assert set(pc.unique(tables["test"]["country"]).to_pylist()) == {"NL"}


def test_scenarios_option_keeps_some_scenarios(samples):
    tables, _ = load_builtin("douban", str(samples / "douban"), {"scenarios": ["book", "music"]})
    assert set(pc.unique(tables["all"]["domain"]).to_pylist()) == {"book", "music"}
    tables, _ = load_builtin("kuairand", str(samples / "kuairand"), {"scenarios": [1]})
    assert tables["all"].num_rows == 200
    with pytest.raises(MsrecError, match=r"data.options.scenarios: none of \['7'\] in column `tab`"):
        load_builtin("kuairand", str(samples / "kuairand"), {"scenarios": [7]})
    with pytest.raises(MsrecError, match=r"data.options: unknown option `rows` for dataset mind \(options: scenarios\)"):
        load_builtin("mind", str(samples / "mind"), {"rows": 5})
    with pytest.raises(MsrecError, match="data.options.scenarios: a non-empty list"):
        load_builtin("mind", str(samples / "mind"), {"scenarios": []})


def test_a_file_path_is_read_directly(samples):
    tables, _ = load_builtin("mind", str(samples / "mind" / "mind_sample.csv"), {})
    assert tables["all"].num_rows == 8000
    tables, _ = load_builtin("aliexpress", str(samples / "aliexpress" / "aliexpress_train_sample.csv"), {})
    assert set(tables) == {"all"} and tables["all"].num_rows == 100  # one file: msrec splits it
    assert set(pc.unique(tables["all"]["country"]).to_pylist()) == {"aliexpress"}


def test_kuairand_missing_categorical_values_are_a_category(samples, tmp_path):
    table = pacsv.read_csv(samples / "kuairand" / "kuairand_sample.csv")
    for name in ("onehot_feat4", "user_active_degree"):  # a float and an integer column, 5 cells blanked
        col = table[name].to_pylist()
        table = table.set_column(table.column_names.index(name), name,
                                 pa.array([None] * 5 + col[5:], table[name].type))
    pacsv.write_csv(table, tmp_path / "kuairand_data.csv")
    tables, _ = load_builtin("kuairand", str(tmp_path), {})
    for name in ("onehot_feat4", "user_active_degree"):
        col = tables["all"][name]
        assert col.type == pa.int64() and col.null_count == 0
        assert col.to_pylist()[:5] == [-1] * 5
    result = msrec.train({"data": {"dataset": "kuairand", "path": str(tmp_path)}, "model": {"name": "dnn"},
                          "train": {"epochs": 1, "progress": False}}, save=False)
    assert math.isfinite(result.metrics["val"]["overall"]["logloss"])


@pytest.mark.parametrize("name", NAMES)
def test_missing_path_names_it(name, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(MsrecError, match=f"{name}: data.path {re.escape(str(missing))} does not exist"):
        load_builtin(name, str(missing), {})
    with pytest.raises(MsrecError, match=f"{name}: set data.path"):
        load_builtin(name, None, {})


@pytest.mark.parametrize("name", NAMES)
def test_folder_without_the_files_names_it(name, tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(MsrecError, match=f"^{name}: ") as err:
        load_builtin(name, str(tmp_path), {})
    message = str(err.value)
    assert str(tmp_path) in message and ".csv" in message and "\n" not in message


def test_aliexpress_country_folder_without_test_names_it(samples, tmp_path):
    folder = tmp_path / "AliExpress_FR"
    folder.mkdir()
    shutil.copy(samples / "aliexpress" / "aliexpress_train_sample.csv", folder / "train.csv")
    with pytest.raises(MsrecError, match=f"aliexpress: {re.escape(str(folder))} lacks test.csv"):
        load_builtin("aliexpress", str(tmp_path), {})


def test_a_file_without_a_layout_column_names_file_and_column(samples, tmp_path):
    table = pacsv.read_csv(samples / "mind" / "mind_sample.csv").drop_columns(["SubCategory"])
    path = tmp_path / "mind_data.csv"
    pacsv.write_csv(table, path)
    with pytest.raises(MsrecError, match=rf"{re.escape(str(path))}: missing column `SubCategory`"):
        load_builtin("mind", str(tmp_path), {})


def test_aliexpress_countries_whose_column_types_disagree_are_named(samples, tmp_path):
    import pyarrow.csv as pacsv

    for country, as_text in (("NL", False), ("US", True)):
        folder = tmp_path / f"AliExpress_{country}"
        folder.mkdir()
        for split in ("train", "test"):
            table = pacsv.read_csv(samples / "aliexpress" / f"aliexpress_{split}_sample.csv")
            if as_text:  # a country whose first categorical column holds text ids
                table = table.set_column(1, "categorical_1", pc.binary_join_element_wise(
                    "id", pc.cast(table["categorical_1"], "string"), ""))
            pacsv.write_csv(table, folder / f"{split}.csv")
    with pytest.raises(MsrecError, match=r"aliexpress: the country folders in .* do not agree on their columns' types"):
        load_builtin("aliexpress", str(tmp_path), {})
