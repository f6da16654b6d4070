"""The run directory from the user's side: it works from any folder and after a move, an old (0.1) run still
loads with today's metrics shape, `evaluate --json` is valid JSON, predict keeps integer ids, and a
`TrainResult` prints briefly."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest
import yaml

import msrec
from msrec.api import train
from msrec.runs import load_run


@pytest.fixture(scope="module")
def home(synthetic_csv, synthetic_config, tmp_path_factory, cli) -> Path:
    """A user's folder `home/` with `trial/clicks.csv` and `trial/config.yaml` (paths relative to itself),
    trained from `home/` as `msrec train trial/config.yaml --out runs/first`."""
    home = tmp_path_factory.mktemp("home")
    (home / "trial").mkdir()
    shutil.copy(synthetic_csv, home / "trial" / "clicks.csv")
    config = synthetic_config(data={"train": "clicks.csv"})
    (home / "trial" / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        result = cli("train", "trial/config.yaml", "--out", "runs/first")
    assert result.code == 0, result.stderr
    return home


def test_a_run_stores_absolute_data_paths_and_evaluates_from_any_folder(home, cli, tmp_path, monkeypatch):
    run = home / "runs" / "first"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["train"] == str(home / "trial" / "clicks.csv")
    monkeypatch.chdir(tmp_path)
    result = cli("evaluate", run, "--json")
    assert result.code == 0, result.stderr
    again, saved = json.loads(result.stdout), json.loads((run / "metrics.json").read_text())["test"]
    assert again["macro_auc"] == pytest.approx(saved["macro_auc"], abs=1e-9)
    assert again["tasks"]["click"]["scenarios"].keys() == saved["tasks"]["click"]["scenarios"].keys()
    moved = tmp_path / "archive" / "first"  # the run moved on its own: still whole
    shutil.copytree(run, moved)
    assert cli("evaluate", moved, "--json").stdout == result.stdout
    assert cli("predict", moved, home / "trial" / "clicks.csv", "scores.csv").code == 0


def test_predict_writes_integer_ids_as_integers(home, cli, tmp_path):
    """Ids are read from a CSV as text (so that "007" keeps its spelling); the output writes the integer
    ids of the input as integers again, not as quoted text."""
    out = tmp_path / "scores.csv"
    assert cli("predict", home / "runs" / "first", home / "trial" / "clicks.csv", out).code == 0
    assert not out.read_text().splitlines()[1].startswith('"')
    scores = pacsv.read_csv(out)
    for name in ("user_id", "item_id", "user_group"):
        assert pa.types.is_integer(scores[name].type), name
    assert scores["scenario"].to_pylist() == pacsv.read_csv(home / "trial" / "clicks.csv")["scenario"].to_pylist()


def test_evaluate_json_writes_an_undefined_auc_as_null(home, cli, tmp_path):
    """A scenario whose rows hold one class has no AUC: null in the printed JSON, as in metrics.json."""
    table = pacsv.read_csv(home / "trial" / "clicks.csv")
    one_class = pc.equal(table["scenario"], table["scenario"][0])
    clicks = pc.if_else(one_class, pa.scalar(0, table["click"].type), table["click"])
    pacsv.write_csv(table.set_column(table.column_names.index("click"), "click", clicks), tmp_path / "eval.csv")
    result = cli("evaluate", home / "runs" / "first", "--data", tmp_path / "eval.csv", "--json")
    assert result.code == 0, result.stderr

    def refuse(token: str):
        raise AssertionError(f"invalid JSON constant {token}")

    block = json.loads(result.stdout, parse_constant=refuse)["tasks"]["click"]
    assert block["scenarios"][table["scenario"][0].as_py()]["auc"] is None
    assert block["overall"]["auc"] is not None


def test_a_run_written_by_0_1_loads_with_the_tasks_form(home, cli, tmp_path):
    """msrec 0.1 wrote a one-task split as the task's block itself (no "format"): loading upgrades it in
    memory, the file stays as it was, and evaluate still prints its table."""
    run = tmp_path / "old"
    shutil.copytree(home / "runs" / "first", run)
    current = json.loads((run / "metrics.json").read_text())
    old = {split: current[split]["tasks"]["click"] for split in ("val", "test")}
    old = {**old, "train": current["train"], "model": current["model"]}
    (run / "metrics.json").write_text(json.dumps(old))
    metrics = load_run(run).metrics
    assert metrics["format"] == 2
    for split in ("val", "test"):
        assert metrics[split]["tasks"] == {"click": old[split]}
        assert metrics[split]["macro_auc"] == old[split]["macro_auc"]
        assert metrics[split]["overall"] == {k: old[split]["overall"][k] for k in ("auc", "logloss")}
    assert metrics["train"] == old["train"] and "format" not in json.loads((run / "metrics.json").read_text())
    result = cli("evaluate", run)
    assert result.code == 0 and "AUC per scenario" in result.stdout


def test_a_train_result_prints_briefly_and_the_default_folder_is_documented(synthetic_config, tmp_path):
    result = train(synthetic_config(), out=tmp_path / "api-run")
    text = repr(result)
    assert len(text) < 300 and "tensor(" not in text and "api-run" in text and "dnn" in text
    assert f"test_macro_auc={result.metrics['test']['macro_auc']:.4f}" in text
    assert "runs/<model>-<YYYYmmdd-HHMMSS>" in inspect.getdoc(msrec.train)


def test_weights_are_read_into_the_models_own_tensors(tmp_path):
    """Loading a run reads model.safetensors into the model's storage (no second copy of a large table); a file of
    another layout is left to load_model, whose checks and loading hooks name the difference."""
    import torch
    from safetensors.torch import save_file

    from msrec.data.io import read_tensors_into

    saved = {"table": torch.randn(50, 4), "steps": torch.arange(3)}
    save_file(saved, tmp_path / "w.safetensors")
    live = {"table": torch.zeros(50, 4), "steps": torch.zeros(3, dtype=torch.int64)}
    storage = live["table"].data_ptr()
    assert read_tensors_into(tmp_path / "w.safetensors", live)
    assert torch.equal(live["table"], saved["table"]) and torch.equal(live["steps"], saved["steps"])
    assert live["table"].data_ptr() == storage
    for other in ({"table": torch.zeros(50, 4)}, {"table": torch.zeros(49, 4), "steps": torch.zeros(3).long()},
                  {"table": torch.zeros(50, 4), "steps": torch.zeros(3, dtype=torch.int32)}):
        assert not read_tensors_into(tmp_path / "w.safetensors", other)
        assert not other["table"].any()  # nothing read


def test_a_hierarchical_run_written_before_level_sharing_loads_as_it_was_built(tmp_path):
    """Runs of a scenario of several columns written before `level_sharing` (default on since) hold flat
    per-combination tensors and no such key in config.yaml: they load into the flat model they were."""
    cfg = {"data": {"dataset": "synthetic", "options": {"rows": 3000, "levels": [3, 2]},
                    "scenario": ["country", "placement"]},
           "model": {"name": "star", "level_sharing": False}, "train": {"epochs": 1, "progress": False}}
    result = train(cfg, out=tmp_path / "run", console=None)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    del config["model"]["level_sharing"]
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(config))
    run = load_run(tmp_path / "run")
    assert run.config.model.options()["level_sharing"] is False
    assert msrec.evaluate(run)["macro_auc"] == pytest.approx(result.metrics["test"]["macro_auc"], abs=1e-12)
