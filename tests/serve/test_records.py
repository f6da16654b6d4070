"""What a request may hold: the coercions `msrec predict` applies to a CSV (a number for a text id or scenario
when its text form is known, text for an integer id), and a 422 naming the record (from 0) and the field for
everything else, including what only the encoder finds (a blank id under `data.missing_ids: error`)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from serve_fixtures import perturb

from msrec.config import parse_config
from msrec.data.encode import Encoder
from msrec.models.registry import build_model
from msrec.runs import write_run
from msrec.schema import Schema
from msrec.serve.app import create_app

OWN = {"sparse": ["uid", "shop"], "dense": ["price"], "lists": {}, "scenario": "page", "scenario_features": [],
       "labels": ["click"]}


def own_raw(n: int = 300) -> pa.Table:
    """Integer user ids, a text column holding some digit-only values ("7", "007"), a text scenario whose
    values look like numbers but one ("07") keeps the column text."""
    rng = np.random.default_rng(3)
    return pa.table({"uid": rng.integers(1, 50, n), "shop": rng.choice(["A1", "B2", "7", "007"], n),
                     "price": rng.gamma(2.0, 5.0, n), "page": rng.choice(["1", "2", "07"], n),
                     "click": rng.integers(0, 2, n)})


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """A service over a run whose encoder refuses blank ids (`data.missing_ids: error`)."""
    root = tmp_path_factory.mktemp("own")
    pq.write_table(own_raw(), root / "train.parquet")
    encoder = Encoder(Schema(**OWN), missing_ids="error").fit(own_raw())
    assert encoder.sparse["shop"].kind == "str" and encoder.sparse["uid"].kind == "int"
    assert encoder.scenario.kind == "str"
    config = parse_config({"data": {"train": str(root / "train.parquet"), "missing_ids": "error", **OWN},
                           "model": {"name": "dnn", "embed_dim": 4, "mlp": {"hidden": [8]}},
                           "train": {"progress": False}})
    model = build_model("dnn", encoder.spec(), config.model.options())
    perturb(model)
    run = write_run(root / "run", config, encoder, model.eval(), {"model": "dnn"})
    with TestClient(create_app(run)) as client:
        yield client


ROW = {"uid": 3, "shop": "A1", "price": 9.5, "page": "2"}


def _post(client, *changes: dict):
    return client.post("/predict", json=[{**ROW, **change} for change in changes])


@pytest.mark.parametrize(("sent", "canonical"), [
    ({"page": 1}, {"page": "1"}),        # pandas turns a CSV's "1" into 1
    ({"page": 2.0}, {"page": "2"}),
    ({"shop": 7}, {"shop": "7"}),         # a known value of a text column, sent as a number
    ({"uid": "12"}, {"uid": 12}),         # text holding an integer, as a CSV holds it
    ({"uid": 12.0}, {"uid": 12}),
])
def test_values_predict_reads_from_a_csv_are_accepted_and_scored_alike(own, sent, canonical):
    answer = _post(own, sent, canonical)
    assert answer.status_code == 200, answer.text
    first, second = answer.json()["scores"]
    assert first == pytest.approx(second, abs=1e-7)


@pytest.mark.parametrize(("change", "field"), [
    ({"page": 7}, "page"),                # "7" is no scenario ("07" is)
    ({"page": True}, "page"),
    ({"shop": 8}, "shop"),                # a number that names no known text value: refused, not "unknown"
    ({"shop": 7.5}, "shop"),
    ({"uid": 1.5}, "uid"),
    ({"uid": 10**30}, "uid"),             # beyond int64
    ({"uid": "1.5"}, "uid"),
    ({"uid": "abc"}, "uid"),
    ({"uid": [1]}, "uid"),
    ({"shop": ""}, "shop"),               # blank ids are errors in this run: found by the encoder
    ({"shop": "NaN"}, "shop"),
    ({"shop": None}, "shop"),
    ({"uid": None}, "uid"),
    ({"uid": ""}, "uid"),
])
def test_everything_else_is_a_422_naming_the_record_from_0_and_the_field(own, change, field):
    answer = _post(own, {}, {}, change)
    assert answer.status_code == 422, answer.text
    problem = answer.json()["detail"][0]
    assert (problem["record"], problem["field"]) == (2, field), problem
    assert problem["loc"] == ["body", 2, field] and "row" not in problem["msg"], problem


def test_unknown_text_stays_an_unknown_id(own):
    assert _post(own, {"shop": "8"}, {"shop": "never-seen"}).status_code == 200


def test_blank_ids_are_scored_where_the_run_allows_them(run_dirs):
    """The shared fixtures' encoder keeps blanks as a category (`data.missing_ids` default)."""
    from serve_fixtures import make_raw

    rows = make_raw(3, seed=5, with_labels=False).to_pylist()
    rows[0]["tier"], rows[1]["tier"] = "", None
    with TestClient(create_app(run_dirs("dnn"))) as client:
        assert client.post("/predict", json=rows).status_code == 200


def test_pandas_records_of_a_movielens_test_csv_score_as_msrec_predict_scores_the_csv(ml_csv, cli):
    """Issue 11: the test CSV of a MovieLens split, turned into JSON by pandas (`"scenario": 0`, integer
    ids), is scored by the service exactly as `msrec predict` scores the CSV."""
    import pandas as pd

    run, test_csv = ml_csv / "runs" / "ml-dnn", ml_csv / "test.csv"
    result = cli("predict", run, test_csv, ml_csv / "scores.csv", "--scores-only")
    assert result.code == 0, result.stderr
    expected = pacsv.read_csv(ml_csv / "scores.csv")["score_label"].to_numpy()
    records = json.loads(pd.read_csv(test_csv).to_json(orient="records"))
    assert isinstance(records[0]["scenario"], int) and isinstance(records[0]["user_id"], int)
    with TestClient(create_app(run)) as client:
        meta = client.get("/metadata").json()
        answer = client.post("/predict", json=records)
    assert answer.status_code == 200, answer.text[:500]
    np.testing.assert_allclose(np.array(answer.json()["scores"])[:, 0], expected, rtol=0, atol=1e-6)
    types = {f["name"]: f["type"] for f in meta["features"]["sparse"]}
    assert types["user_id"] == types["movie_id"] == "integer" and types["zip"] == "string"


def test_integer_ids_read_from_a_csv_refuse_fractions_and_ids_beyond_int64(ml_csv):
    """Issue 17: CSV ids that are integers are integer columns: 1.5 and a 30-digit id are 422s naming the
    record and the field; text holding an integer (an id, the scenario) is read as predict reads it."""
    import pandas as pd

    records = json.loads(pd.read_csv(ml_csv / "test.csv", nrows=3).to_json(orient="records"))
    with TestClient(create_app(ml_csv / "runs" / "ml-dnn")) as client:
        for bad in (1.5, 10**30, "10" * 15):
            answer = client.post("/predict", json=[records[0], {**records[1], "user_id": bad}])
            assert answer.status_code == 422, (bad, answer.text)
            assert {k: answer.json()["detail"][0][k] for k in ("record", "field")} == {"record": 1, "field": "user_id"}
        as_text = client.post("/predict", json=[records[2], {**records[2], "user_id": str(records[2]["user_id"]),
                                                             "scenario": str(records[2]["scenario"])}])
        assert as_text.status_code == 200, as_text.text
        first, second = as_text.json()["scores"]
        assert first == second
