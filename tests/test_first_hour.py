"""The first hour with one's own data (issue 17), walked as a new user walks it: a public sample (Douban) with
renamed columns, blanks in a categorical column and a date column, three scenarios; train from the data's
folder, evaluate from another one, predict, export to ONNX and score raw rows with onnxruntime, serve good
and bad requests, benchmark two models, and read a model's options."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import yaml

RENAMED = {"user_id": "uid", "item_id": "iid", "rating": "clicked", "domain": "surface", "living_place": "city",
           "join_time": "joined", "time_bin": "tbin"}


@pytest.fixture(scope="module")
def trial(shared_data, tmp_path_factory):
    """The user's folder: `trial/my_clicks.csv` (2,700 rows), `trial/new_rows.csv` (300 unlabelled rows) and
    `trial/config.yaml` with paths relative to itself."""
    table = pacsv.read_csv(shared_data / "samples" / "douban" / "douban_sample.csv",
                           convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
    table = table.rename_columns([RENAMED[c] for c in table.column_names])
    home = tmp_path_factory.mktemp("home")
    folder = home / "trial"
    folder.mkdir()
    pacsv.write_csv(table.slice(0, 2700), folder / "my_clicks.csv")
    pacsv.write_csv(table.slice(2700).drop_columns(["clicked"]), folder / "new_rows.csv")
    config = {"data": {"train": "my_clicks.csv", "sparse": ["uid", "iid", "city"], "dense": ["tbin"],
                       "scenario": "surface", "labels": ["clicked"], "user": "uid"},
              "model": {"name": "dnn", "embed_dim": 8},
              "train": {"epochs": 2, "batch_size": 256, "progress": False}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return home


@pytest.fixture(scope="module")
def run_dir(trial, cli):
    """`msrec train trial/config.yaml --out runs/first` run from the user's home folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(trial)
        result = cli("train", "trial/config.yaml", "--out", "runs/first")
    assert result.code == 0, result.stderr
    return trial / "runs" / "first"


def test_blanks_in_a_categorical_column_train_by_default(run_dir, trial):
    """The sample's `city` has blank cells: by default they are a category of their own, not an error."""
    assert "" in pacsv.read_csv(trial / "trial" / "my_clicks.csv", convert_options=pacsv.ConvertOptions(
        strings_can_be_null=False, column_types={"city": pa.string()}))["city"].to_pylist()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["test"]["tasks"]["clicked"]["scenarios"]) == {"book", "movie", "music"}


def test_evaluate_from_another_folder_prints_valid_json(run_dir, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("evaluate", run_dir, "--json")
    assert result.code == 0, result.stderr

    def no_nan(token):
        raise AssertionError(f"invalid JSON constant {token}")

    metrics = json.loads(result.stdout, parse_constant=no_nan)
    saved = json.loads((run_dir / "metrics.json").read_text())["test"]  # the same rows, rebuilt from elsewhere
    assert metrics["tasks"]["clicked"]["overall"]["auc"] == pytest.approx(saved["tasks"]["clicked"]["overall"]["auc"])
    assert metrics["tasks"]["clicked"]["overall"]["gauc"] is None or 0 <= metrics["tasks"]["clicked"]["overall"]["gauc"] <= 1


def test_predict_keeps_integer_ids_as_integers(run_dir, trial, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "scores.csv"
    result = cli("predict", run_dir, trial / "trial" / "new_rows.csv", out)
    assert result.code == 0, result.stderr
    first_row = out.read_text().splitlines()[1]
    assert not first_row.startswith('"'), first_row  # uid written as a number, not quoted text
    scores = pacsv.read_csv(out)
    assert pa.types.is_integer(scores["uid"].type)
    assert scores.num_rows == 300


def test_onnx_on_raw_rows_matches_predict(run_dir, trial, cli, tmp_path):
    import onnxruntime as ort

    import msrec

    model = tmp_path / "dnn.onnx"
    assert cli("export", run_dir, "--format", "onnx", "--out", model).code == 0
    rows = pacsv.read_csv(trial / "trial" / "new_rows.csv").slice(0, 20).to_pylist()
    inputs = msrec.InputEncoder(run_dir).encode(rows)
    session = ort.InferenceSession(str(model))
    onnx_scores = session.run(["scores"], inputs)[0]
    expected = msrec.predict(run_dir, trial / "trial" / "new_rows.csv")["score_clicked"].to_numpy()[:20]
    np.testing.assert_allclose(onnx_scores[:, 0], expected, rtol=1e-5, atol=1e-6)


def test_export_refuses_a_mismatched_extension(run_dir, cli, tmp_path):
    result = cli("export", run_dir, "--format", "onnx", "--out", tmp_path / "x.pt")
    assert result.code != 0 and ".pt" in result.stderr and "onnx" in result.stderr
    assert not (tmp_path / "x.pt").exists()


def test_serve_good_and_bad_requests(run_dir, trial):
    from fastapi.testclient import TestClient

    from msrec.serve.app import create_app

    rows = pacsv.read_csv(trial / "trial" / "new_rows.csv").slice(0, 3).drop_columns(["joined"]).to_pylist()
    with TestClient(create_app(run_dir)) as client:
        meta = client.get("/metadata").json()
        assert {f["name"]: f["type"] for f in meta["features"]["sparse"]}["uid"] == "integer"
        good = client.post("/predict", json=[{**rows[0], "city": ""}, *rows[1:]])
        assert good.status_code == 200, good.text
        for bad in (1.5, 10**30):
            answer = client.post("/predict", json=[rows[0], {**rows[1], "uid": bad}])
            assert answer.status_code == 422, (bad, answer.text)
            problem = answer.json()["detail"][0]
            assert (problem["record"], problem["field"]) == (1, "uid")


def test_a_date_label_is_named_as_written(trial, cli, tmp_path):
    config = yaml.safe_load((trial / "trial" / "config.yaml").read_text())
    config["data"].update(train=str(trial / "trial" / "my_clicks.csv"), labels=["joined"])
    path = tmp_path / "dates.yaml"
    path.write_text(yaml.safe_dump(config))
    result = cli("train", path, "--out", tmp_path / "run")
    assert result.code == 1
    assert "joined" in result.stderr and "datetime" not in result.stderr
    assert "'2007-07-10'" in result.stderr  # the first row's value, as the user wrote it


def test_two_model_benchmark_with_documented_keys(trial, cli, tmp_path):
    spec = {"config": str(trial / "trial" / "config.yaml"), "models": ["dnn", "separate"], "seeds": 1,
            "train": {"epochs": 1}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = cli("benchmark", tmp_path / "spec.yaml", "--out", tmp_path / "bench")
    assert result.code == 0, result.stderr
    report = (tmp_path / "bench" / "report.md").read_text()
    assert "| 0.0 |" not in report  # short runs' seconds keep their digits
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({**spec, "dataset": "my.yaml"}))
    typo = cli("benchmark", tmp_path / "typo.yaml", "--out", tmp_path / "bench2")
    assert typo.code == 1 and "dataset" in typo.stderr and "config" in typo.stderr and "seeds" in typo.stderr


def test_models_name_lists_its_options(cli):
    result = cli("models", "star")
    assert result.code == 0, result.stderr
    assert "embed_dim" in result.stdout and "16" in result.stdout


def test_python_api_result_prints_briefly(trial, tmp_path):
    import msrec

    config = yaml.safe_load((trial / "trial" / "config.yaml").read_text())
    config["data"]["train"] = str(trial / "trial" / "my_clicks.csv")
    result = msrec.train(config, out=tmp_path / "api-run")
    text = repr(result)
    assert len(text) < 600 and "tensor(" not in text and "api-run" in text
    assert not math.isnan(result.metrics["test"]["macro_auc"])
