"""The headline end to end: `msrec train` with dnn on MovieLens 100K (GroupLens layout, seeded 80/10/10
split), then `msrec evaluate` and `msrec predict` on the run directory; run directories are atomic."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from msrec.config import load_config
from msrec.data.prepare import load_splits
from msrec.runs import RUN_FILES

# The config; the test trains 4 of its 10 epochs (`--set`), enough to pass 0.76 with margin.
ML_CONFIG = {
    "data": {"dataset": "movielens-100k", "split": [0.8, 0.1, 0.1]},
    "model": {"name": "dnn", "embed_dim": 16},
    "train": {"epochs": 10, "batch_size": 4096, "lr": 0.001, "weight_decay": 0.00001, "patience": 3,
              "seed": 2022, "progress": False},
}


@pytest.fixture(scope="module")
def ml(ml100k_dir, tmp_path_factory, cli):
    root = tmp_path_factory.mktemp("e2e")
    config = root / "ml.yaml"
    config.write_text(yaml.safe_dump({**ML_CONFIG, "data": {**ML_CONFIG["data"], "path": str(ml100k_dir)}}))
    run = root / "run"
    result = cli("train", config, "--out", run, "--set", "train.epochs=4", "--set", "model.hidden=[256, 128]")
    assert result.code == 0, result.stderr
    # The test split as files, to evaluate and predict on.
    cfg = load_config(config)
    test = load_splits(cfg.data, cfg.train.seed).tables["test"]
    pq.write_table(test, root / "test.parquet")
    pacsv.write_csv(test, root / "test.csv")
    return {"root": root, "config": config, "run": run, "train": result, "test": test}


def test_train_reaches_the_published_auc_and_writes_the_documented_metrics(ml):
    run = ml["run"]
    assert sorted(p.name for p in run.iterdir()) == sorted(RUN_FILES)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["format"] == 2 and list(metrics["test"]["tasks"]) == ["label"]
    assert metrics["test"]["macro_auc"] == metrics["test"]["tasks"]["label"]["macro_auc"]
    test = metrics["test"]["tasks"]["label"]
    assert test["overall"]["auc"] >= 0.76
    assert set(test["overall"]) >= {"auc", "logloss", "gauc"}
    assert list(test["scenarios"]) == ["0", "1", "2"]
    for block in test["scenarios"].values():
        assert set(block) >= {"auc", "logloss", "rows", "positives"}
        assert 0 < block["positives"] < block["rows"]
    assert sum(b["rows"] for b in test["scenarios"].values()) == 10_000
    assert test["macro_auc"] == pytest.approx(np.mean([b["auc"] for b in test["scenarios"].values()]))
    assert set(metrics["val"]["tasks"]["label"]) >= {"overall", "scenarios", "macro_auc"}
    train = metrics["train"]
    assert train["epochs"] == 4 and 1 <= train["best_epoch"] <= 4
    assert train["seconds"] > 0 and train["samples_per_second"] > 0
    assert "test AUC per scenario" in ml["train"].stdout and str(run) in ml["train"].stdout


def test_set_overrides_are_saved_in_the_run_config(ml):
    saved = yaml.safe_load((ml["run"] / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 4 and saved["model"]["hidden"] == [256, 128]
    assert saved["train"]["lr"] == 0.001


def test_evaluate_reproduces_the_saved_test_metrics(ml, cli):
    saved = json.loads((ml["run"] / "metrics.json").read_text())["test"]["tasks"]["label"]
    default = cli("evaluate", ml["run"], "--json")
    assert default.code == 0, default.stderr
    again = json.loads(default.stdout)["tasks"]["label"]
    from_file = json.loads(cli("evaluate", ml["run"], "--data", ml["root"] / "test.parquet", "--json").stdout)
    from_file = from_file["tasks"]["label"]
    for report in (again, from_file):
        assert report["overall"]["auc"] == pytest.approx(saved["overall"]["auc"], abs=1e-9)
        assert report["macro_auc"] == pytest.approx(saved["macro_auc"], abs=1e-9)
        for name, block in saved["scenarios"].items():
            assert report["scenarios"][name]["auc"] == pytest.approx(block["auc"], abs=1e-9)
    table = cli("evaluate", ml["run"])
    assert table.code == 0 and "AUC per scenario" in table.stdout


def test_predict_writes_one_score_column_per_task_and_matches_evaluate(ml, cli):
    root, test = ml["root"], ml["test"]
    saved = json.loads((ml["run"] / "metrics.json").read_text())["test"]["tasks"]["label"]
    for src, dst in [("test.csv", "scores.csv"), ("test.parquet", "scores.parquet")]:
        result = cli("predict", ml["run"], root / src, root / dst)
        assert result.code == 0, result.stderr
    from_csv = pacsv.read_csv(root / "scores.csv")
    from_parquet = pq.read_table(root / "scores.parquet")
    assert from_parquet.column_names == [*test.column_names, "score_label"]
    assert from_csv.num_rows == from_parquet.num_rows == 10_000
    scores = from_parquet["score_label"].to_numpy()
    assert np.allclose(from_csv["score_label"].to_numpy(), scores, atol=1e-6)
    assert ((scores > 0) & (scores < 1)).all()
    labels = test["label"].to_numpy()
    assert roc_auc_score(labels, scores) == pytest.approx(saved["overall"]["auc"], abs=1e-9)
    scenario = test["scenario"].to_numpy()
    for name, block in saved["scenarios"].items():
        m = scenario == int(name)
        assert roc_auc_score(labels[m], scores[m]) == pytest.approx(block["auc"], abs=1e-9)
    only = cli("predict", ml["run"], root / "test.parquet", root / "only.parquet", "--scores-only")
    assert only.code == 0 and pq.read_table(root / "only.parquet").column_names == ["score_label"]


def test_training_again_into_the_same_directory_fails_and_keeps_the_first_run(ml, cli):
    run = ml["run"]
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()}
    result = cli("train", ml["config"], "--out", run, "--set", "train.epochs=1")
    assert result.code == 1
    assert "already exists" in result.stderr and "--overwrite" in result.stderr and "Traceback" not in result.stderr
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()} == before


# ------------------------------------------------------------ small synthetic runs: tasks, overwrite, crashes


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_two_tasks_give_two_score_columns_and_a_block_per_task(tmp_path, cli):
    config = write_config(tmp_path / "c.yaml", {
        "data": {"dataset": "synthetic", "options": {"rows": 4000, "tasks": 2}},
        "model": {"name": "dnn", "embed_dim": 4, "hidden": [16]},
        "train": {"epochs": 1, "batch_size": 512, "progress": False}})
    assert cli("train", config, "--out", tmp_path / "run").code == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["test"]["tasks"]) == {"click", "conversion"}
    for block in metrics["test"]["tasks"].values():
        assert set(block) >= {"overall", "scenarios", "macro_auc"} and "oracle_auc" in block["overall"]
    from msrec.data.datasets import synthetic

    pq.write_table(synthetic.generate(rows=300, tasks=2, seed=9), tmp_path / "new.parquet")
    assert cli("predict", tmp_path / "run", tmp_path / "new.parquet", tmp_path / "s.csv", "--scores-only").code == 0
    assert pacsv.read_csv(tmp_path / "s.csv").column_names == ["score_click", "score_conversion"]


def test_overwrite_replaces_a_run_only_once_training_succeeds(tmp_path, cli, synthetic_config):
    config = write_config(tmp_path / "c.yaml", synthetic_config())
    run = tmp_path / "runs" / "a"
    assert cli("train", config, "--out", run).code == 0
    first = (run / "model.safetensors").read_bytes()
    assert cli("train", config, "--out", run, "--overwrite", "--set", "train.seed=5").code == 0
    assert (run / "model.safetensors").read_bytes() != first
    assert leftovers(run.parent) == ["a"]


def test_a_run_that_crashes_midway_leaves_no_directory(tmp_path, cli, synthetic_config, monkeypatch):
    from msrec.train.trainer import Trainer

    calls = []
    validate = Trainer.validate

    def crash_after_first_epoch(self, table):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("simulated crash")
        return validate(self, table)

    monkeypatch.setattr(Trainer, "validate", crash_after_first_epoch)
    config = write_config(tmp_path / "c.yaml", synthetic_config(train={"epochs": 3, "patience": 5}))
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli("train", config, "--out", tmp_path / "runs" / "new")
    assert len(calls) == 2  # it crashed in the second epoch, not before training
    assert not (tmp_path / "runs").exists() or leftovers(tmp_path / "runs") == []


def test_a_crash_while_writing_keeps_the_earlier_run(tmp_path, cli, synthetic_config, monkeypatch):
    config = write_config(tmp_path / "c.yaml", synthetic_config())
    run = tmp_path / "runs" / "a"
    assert cli("train", config, "--out", run).code == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    run_module = importlib.import_module("msrec.runs")  # `msrec.train` is also the API function

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(run_module, "save_model", broken_save)
    with pytest.raises(OSError, match="disk full"):
        cli("train", config, "--out", run, "--overwrite", "--set", "train.seed=5")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert leftovers(run.parent) == ["a"]  # no half-written temporary folder either


def test_metrics_json_has_no_nan(tmp_path, cli, synthetic_config):
    """NaN (e.g. a one-class scenario's AUC) is written as null: metrics.json stays valid JSON for every tool."""
    config = write_config(tmp_path / "c.yaml", synthetic_config())
    assert cli("train", config, "--out", tmp_path / "run").code == 0
    text = (tmp_path / "run" / "metrics.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert not math.isnan(json.loads(text)["val"]["tasks"]["click"]["overall"]["auc"])
