"""Hierarchical scenarios (`data.scenario: [country, placement]`): combination ids, the fallback of rare
combinations to their first-level value (`data.min_scenario_rows`), the levels models and reports read,
encoder.json, per-level metrics, and the whole path (train, metrics.json, predict, serve) on a small CSV."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

import msrec
from msrec.data.encode import Encoder
from msrec.errors import MsrecError
from msrec.schema import Schema
from msrec.train.metrics import evaluation_report

COUNTS = {("DE", "feed"): 40, ("DE", "top"): 3, ("US", "feed"): 50, ("US", "top"): 30, ("US", "side"): 2,
          ("FR", "feed"): 25}


def rows(counts: dict = COUNTS, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    country, placement = zip(*[key for key, n in counts.items() for _ in range(n)])
    n = len(country)
    return pa.table({"country": list(country), "placement": list(placement),
                     "item": [f"i{k}" for k in rng.integers(0, 10, n)], "price": rng.random(n),
                     "click": rng.integers(0, 2, n)})


def schema(columns=("country", "placement")) -> Schema:
    return Schema(sparse=["item"], dense=["price"], lists={}, scenario=list(columns),
                  scenario_features=list(columns), labels=["click"])


def fitted(min_rows: int = 0, table: pa.Table | None = None) -> Encoder:
    return Encoder(schema(), min_scenario_rows=min_rows).fit(rows() if table is None else table)


def test_every_combination_seen_in_training_gets_an_id_and_its_levels():
    enc = fitted()
    assert enc.scenario_names == ["DE/feed", "DE/top", "FR/feed", "US/feed", "US/side", "US/top"]
    levels = enc.spec().levels
    assert levels.columns == ["country", "placement"]
    assert levels.values == [["DE", "FR", "US"], ["feed", "side", "top"]]
    assert levels.sizes == [4, 4]  # id 0 (none) included
    assert levels.tensor().tolist() == [[1, 1], [1, 3], [2, 1], [3, 1], [3, 2], [3, 3]]
    table = rows()
    scenario = enc.transform(table).scenario.numpy()
    names = np.array(enc.scenario_names)[scenario]
    expected = [f"{c}/{p}" for c, p in zip(table["country"].to_pylist(), table["placement"].to_pylist())]
    assert names.tolist() == expected


def test_rare_combinations_fall_back_to_their_first_level_value():
    enc = fitted(min_rows=10)
    assert enc.scenario_names == ["DE/*", "DE/feed", "FR/feed", "US/*", "US/feed", "US/top"]
    assert enc.spec().levels.tensor().tolist() == [[1, 0], [1, 1], [2, 1], [3, 0], [3, 1], [3, 3]]
    new = pa.table({"country": ["DE", "US", "US", "FR"], "placement": ["top", "side", "top", "feed"],
                    "item": ["i1"] * 4, "price": [0.5] * 4, "click": [0, 1, 0, 1]})
    got = enc.transform(new).scenario.tolist()
    assert [enc.scenario_names[s] for s in got] == ["DE/*", "US/*", "US/top", "FR/feed"]
    # a combination never seen in training, of a known placement: its parent level too (US has a fallback)
    unseen = new.set_column(1, "placement", pa.array(["top", "feed", "feed", "feed"]))
    unseen = unseen.set_column(0, "country", pa.array(["US", "US", "DE", "FR"]))
    assert [enc.scenario_names[s] for s in enc.transform(unseen).scenario.tolist()] == \
        ["US/top", "US/feed", "DE/feed", "FR/feed"]


def test_an_unseen_combination_without_a_fallback_and_an_unknown_value_are_errors_naming_the_column():
    enc = fitted(min_rows=10)
    bad = pa.table({"country": ["US", "FR"], "placement": ["feed", "top"], "item": ["i1"] * 2, "price": [0.5] * 2,
                    "click": [0, 1]})
    with pytest.raises(MsrecError, match=r"new.csv: column `placement` row 2: unknown scenario combination "
                                         r"country='FR', placement='top'.*country='FR' has no fallback"):
        enc.transform(bad, "new.csv")
    bad = bad.set_column(1, "placement", pa.array(["feed", "footer"]))
    with pytest.raises(MsrecError, match=r"new.csv: column `placement` row 2: unknown scenario 'footer' "
                                         r"\(known: feed, side, top\)"):
        enc.transform(bad, "new.csv")
    with pytest.raises(MsrecError, match=r"new.csv: missing column `country`"):
        enc.transform(bad.drop(["country"]), "new.csv")
    with pytest.raises(MsrecError, match=r"data.min_scenario_rows needs several data.scenario columns"):
        Encoder(schema(["country"]), min_scenario_rows=5).fit(rows())


def test_encoder_json_round_trip_keeps_the_hierarchy_and_a_single_column_file_is_unchanged(tmp_path):
    enc = fitted(min_rows=10)
    enc.save(tmp_path / "encoder.json")
    back = Encoder.load(tmp_path / "encoder.json")
    assert back.scenario_names == enc.scenario_names and back.spec().levels == enc.spec().levels
    table = rows(seed=1)
    assert torch.equal(back.transform(table).scenario, enc.transform(table).scenario)
    flat = Encoder(schema(["country"])).fit(rows())
    assert flat.to_dict()["scenario"] == {"kind": "str", "values": ["DE", "FR", "US"], "names": ["DE", "FR", "US"]}
    assert flat.to_dict()["schema"]["scenario"] == "country" and flat.spec().levels is None
    spec_levels = flat.spec().scenario_levels  # a flat scenario seen as one level
    assert spec_levels.sizes == [4] and spec_levels.tensor().tolist() == [[1], [2], [3]]
    broken = json.loads((tmp_path / "encoder.json").read_text())
    broken["scenario"]["combinations"][0] = [1, 9]
    (tmp_path / "bad.json").write_text(json.dumps(broken))
    with pytest.raises(MsrecError, match=r"bad.json: not a valid encoder file .*`placement` is outside"):
        Encoder.load(tmp_path / "bad.json")


def test_fit_in_chunks_counts_combinations_as_one_fit():
    table = rows()
    one = fitted(min_rows=10, table=table)
    chunked = Encoder(schema(), min_scenario_rows=10).fit_chunks(table.to_batches(max_chunksize=7))
    assert chunked.to_dict()["scenario"] == one.to_dict()["scenario"]


def sk_auc(y, p):
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else math.nan


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), min_rows=st.sampled_from([0, 10, 35]))
def test_per_level_metrics_are_those_of_each_level_values_rows(seed, min_rows):
    """A level value's block is the metrics of the rows whose combination has that value (rows of a
    combination fallen back to its parent count at the levels it kept)."""
    enc = fitted(min_rows)
    table = rows(seed=seed)
    encoded = enc.transform(table)
    rng = np.random.default_rng(seed)
    y = encoded.labels[:, 0].numpy()
    p = rng.integers(0, 6, len(y)) / 5
    levels = enc.spec().levels
    report = evaluation_report(encoded.labels, torch.from_numpy(p)[:, None], encoded.scenario, enc.scenario_names,
                               ["click"], levels=levels)["tasks"]["click"]
    level_ids = levels.tensor()[encoded.scenario].numpy()
    for j, column in enumerate(levels.columns):
        blocks = report["levels"][column]["scenarios"]
        expected = {}
        for k, value in enumerate(levels.values[j]):
            m = level_ids[:, j] == k + 1
            if m.any():
                expected[value] = (int(m.sum()), sk_auc(y[m], p[m]))
        assert {v: (b["rows"], b["auc"]) for v, b in blocks.items()}.keys() == expected.keys()
        for value, (n, a) in expected.items():
            assert blocks[value]["rows"] == n
            assert (math.isnan(a) and math.isnan(blocks[value]["auc"])) or abs(blocks[value]["auc"] - a) < 1e-12
        aucs = [a for _, a in expected.values() if not math.isnan(a)]
        assert report["levels"][column]["macro_auc"] == pytest.approx(np.mean(aucs) if aucs else math.nan,
                                                                       nan_ok=True)


def test_train_predict_and_serve_with_two_scenario_columns(tmp_path):
    """The whole path on a CSV: metrics per combination and per level in metrics.json, `msrec predict` and
    the deployer's encoding read both columns, and a record without one is refused naming it."""
    table = rows({key: n * 4 for key, n in COUNTS.items()})
    import pyarrow.csv as pacsv

    pacsv.write_csv(table, tmp_path / "data.csv")
    cfg = {"data": {"train": str(tmp_path / "data.csv"), "sparse": ["item"], "dense": ["price"],
                    "scenario": ["country", "placement"], "min_scenario_rows": 20, "labels": ["click"],
                    "split": [0.6, 0.2, 0.2]},
           "model": {"name": "dnn"}, "train": {"epochs": 1, "batch_size": 64, "progress": False}}
    result = msrec.train(cfg, out=tmp_path / "run")
    run = msrec.load_run(tmp_path / "run")
    block = run.metrics["test"]["tasks"]["click"]
    assert "US/*" in block["scenarios"] and "US/side" not in block["scenarios"]
    assert set(block["levels"]) == {"country", "placement"}
    assert sum(b["rows"] for b in block["levels"]["country"]["scenarios"].values()) == block["overall"]["rows"]
    assert "weighted_macro_auc" in block and result.metrics["test"]["weighted_macro_auc"] is not None
    scored = msrec.predict(tmp_path / "run", tmp_path / "data.csv")
    assert scored.num_rows == table.num_rows and "score_click" in scored.column_names
    from msrec.serve import InputEncoder

    encoder = InputEncoder(tmp_path / "run")
    record = {"country": "US", "placement": "side", "item": "i1", "price": 0.3}
    inputs = encoder.encode([record])
    assert run.encoder.scenario_names[int(inputs["scenario"][0])] == "US/*"
    with pytest.raises(MsrecError, match=r"placement"):
        encoder.encode([{k: v for k, v in record.items() if k != "placement"}])
    with pytest.raises(MsrecError, match=r"country.*unknown scenario 'XX'"):
        encoder.encode([{**record, "country": "XX"}])


def test_evaluate_a_saved_run_reports_per_level(tmp_path):
    import pyarrow.csv as pacsv

    table = rows({key: n * 3 for key, n in COUNTS.items()})
    pacsv.write_csv(table, tmp_path / "data.csv")
    cfg = {"data": {"train": str(tmp_path / "data.csv"), "sparse": ["item"], "dense": ["price"],
                    "scenario": ["country", "placement"], "labels": ["click"], "split": [0.6, 0.2, 0.2]},
           "model": {"name": "dnn"}, "train": {"epochs": 1, "batch_size": 64, "progress": False}}
    msrec.train(cfg, out=tmp_path / "run")
    report = msrec.evaluate(tmp_path / "run", tmp_path / "data.csv")
    levels = report["tasks"]["click"]["levels"]
    assert levels["country"]["scenarios"]["US"]["rows"] == sum(n * 3 for (c, _), n in COUNTS.items() if c == "US")
