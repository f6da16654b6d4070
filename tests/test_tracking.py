"""Experiment tracking (`train.tracking`): an MLflow store (file and SQLite, no server) and TensorBoard event files
hold a run's per-epoch training loss, throughput and validation metrics overall and per scenario, its config as
parameters and its run directory; off by default, and MLflow / TensorBoard are not imported unless asked for."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from rich.console import Console

from msrec import api
from msrec.train.tracking import metric_name

TINY = {"data": {"dataset": "synthetic", "options": {"rows": 1200, "users": 150, "items": 80}},
        "model": {"name": "dnn", "embed_dim": 4, "mlp": {"hidden": [16]}},
        "train": {"epochs": 3, "patience": 5, "batch_size": 256, "threads": 1, "progress": False, "seed": 3}}


def train(tmp_path, **tracking):
    cfg = {**TINY, "train": {**TINY["train"], "tracking": tracking}}
    return api.train(cfg, out=tmp_path / "run", console=Console(file=io.StringIO()))


def check_history(result, history: dict[str, list[tuple[int, float]]]) -> None:
    """Every epoch's numbers, as the run's own history (metrics.json) has them; the per-scenario AUCs average to the
    epoch's macro AUC (the macro is their mean), so each scenario's series is the real per-scenario one."""
    rows = result.metrics["train"]["history"]
    epochs = [r["epoch"] for r in rows]
    scenarios = list(result.metrics["val"]["tasks"]["click"]["scenarios"])
    assert len(scenarios) == 3 and len(epochs) == 3
    for key, name in (("train_loss", "train/loss"), ("val_macro_auc", "val/macro_auc"), ("val_auc", "val/auc"),
                      ("val_logloss", "val/logloss"), ("samples_per_second", "train/samples_per_second")):
        assert [s for s, _ in history[name]] == epochs, name
        assert [v for _, v in history[name]] == pytest.approx([r[key] for r in rows], rel=1e-6), name
    per_scenario = [dict(history[metric_name("val", "scenario", s, "auc")]) for s in scenarios]
    for row in rows:
        assert sum(h[row["epoch"]] for h in per_scenario) / 3 == pytest.approx(row["val_macro_auc"], rel=1e-6)
    best = result.metrics["val"]["tasks"]["click"]["scenarios"]  # the best epoch's full report, logged at the end
    for s in scenarios:
        assert dict(history[metric_name("best_val", "scenario", s, "auc")]).popitem()[1] == pytest.approx(best[s]["auc"], rel=1e-6)


@pytest.mark.parametrize("store", ["file", "sqlite"])
def test_an_mlflow_store_holds_the_runs_epochs_scenarios_config_and_directory(tmp_path, monkeypatch, store):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # msrec opts in for a file store asked for
    uri = str(tmp_path / "mlruns") if store == "file" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = train(tmp_path, mlflow_uri=uri, experiment="tiny")
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    history = {name: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
               for name in run.data.metrics}
    check_history(result, history)
    assert run.data.params["train.lr"] == "0.001" and run.data.params["model.mlp.hidden"] == "[16]"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "run")}
    assert {"run/config.yaml", "run/metrics.json", "run/model.safetensors", "run/encoder.json"} <= artifacts


def test_tensorboard_event_files_hold_the_same(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(tmp_path, tensorboard_dir=str(tmp_path / "tb"))
    (folder,) = (tmp_path / "tb").iterdir()
    events = EventAccumulator(str(folder))
    events.Reload()
    history = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    check_history(result, history)


def test_a_failed_run_is_marked_failed(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = {**TINY, "train": {**TINY["train"], "lr": 1e30, "tracking": {"mlflow_uri": uri}}}  # diverges
    with pytest.raises(Exception, match="diverged"):
        api.train(cfg, save=False, console=Console(file=io.StringIO()))
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("msrec").experiment_id])
    assert run.info.status == "FAILED"


def test_tracking_is_off_by_default_and_imports_nothing():
    code = ("import io, sys\nfrom rich.console import Console\nfrom msrec import api\n"
            f"api.train({TINY!r}, save=False, console=Console(file=io.StringIO()))\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard', 'optuna')]\n"
            "assert not heavy, heavy[:5]\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def test_metric_names_keep_scenarios_readable():
    assert metric_name("val", "auc", "<25") == "val/auc/_25" and metric_name("val", "auc", "35+") == "val/auc/35_"
    assert metric_name("val", "auc", "a b.c-d_e") == "val/auc/a b.c-d_e"
