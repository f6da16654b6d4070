"""Experiment tracking (`train.tracking`): a run's per-epoch numbers, its config and its run directory, in MLflow
and / or TensorBoard event files.

Off by default. MLflow and TensorBoard are imported only when a run asks for them (both are slow to import, and
optional: the `track` extra). MLflow is reached through its client, with the URI given, so that tracking sets no
process-wide MLflow state. What is logged, with the epoch as the step:

- `train/loss`, `train/samples_per_second` (training throughput of the epoch);
- `val/macro_auc`, `val/auc`, `val/logloss` (means over tasks), and `val/scenario/<scenario>/auc` per scenario
  (`val/<task>/scenario/<scenario>/auc` with several tasks; no name is the folder of another, as a file store needs);
- at the end, the same names under `test/` (or `best_val/`) for the finished run's evaluation blocks;
- the config as parameters (`train.lr`, `model.mlp.hidden`, ...), and the run directory as an artifact (`run/`).
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from typing import Any

import yaml

from msrec.config import Config
from msrec.errors import MsrecError
from msrec.train.checkpoint import flatten  # the config as parameters: {"train": {"lr": 0.1}} -> {"train.lr": 0.1}

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")  # MLflow's allowed characters in a metric name


def metric_name(*parts: str) -> str:
    """A metric name MLflow accepts (scenario names such as `<25` or `35+` keep a readable form)."""
    return "/".join(_UNSAFE.sub("_", p) for p in parts)


def split_metrics(prefix: str, report: dict) -> dict[str, float]:
    """The numbers of a validation / evaluation block: the means over tasks and each scenario's AUC."""
    out = {metric_name(prefix, "macro_auc"): report["macro_auc"], metric_name(prefix, "auc"): report["overall"]["auc"],
           metric_name(prefix, "logloss"): report["overall"]["logloss"]}
    tasks = report["tasks"]
    for task, block in tasks.items():
        where = (prefix,) if len(tasks) == 1 else (prefix, task)
        for scenario, numbers in block.get("scenarios", {}).items():
            out[metric_name(*where, "scenario", scenario, "auc")] = numbers["auc"]
    return {k: float(v) for k, v in out.items() if v is not None}


def is_file_store(uri: str) -> bool:
    """A folder or `file:` URI: MLflow's file store (not a database, not a server)."""
    return uri.startswith("file:") or "://" not in uri and not uri.startswith(("databricks", "sqlite:"))


class Tracker:
    """One run's destinations. `epoch_end` is a `Trainer.epoch_hooks` hook; `finish` closes the run (FINISHED, or
    FAILED when training raised)."""

    def __init__(self, cfg: Config, name: str):
        self.cfg, self.name = cfg, name
        tracking = cfg.train.tracking
        self.mlflow = self.run_id = self.tensorboard = None
        if tracking.mlflow_uri:
            self._start_mlflow(tracking.mlflow_uri, tracking.experiment)
        if tracking.tensorboard_dir:
            folder, k = Path(tracking.tensorboard_dir) / name, 1
            while folder.exists():  # another run of the same name: its own folder, not a merged one
                k += 1
                folder = Path(tracking.tensorboard_dir) / f"{name}-{k}"
            self._start_tensorboard(folder)

    def _start_mlflow(self, uri: str, experiment: str) -> None:
        if is_file_store(uri):  # asked for by name: MLflow 3 refuses file stores without this opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Param
        except ImportError:
            raise MsrecError("train.tracking.mlflow_uri: MLflow is not installed "
                             "(pip install 'msrec[track]' or mlflow-skinny)") from None
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:  # a SQLite store's artifacts beside its database, not in the working folder
            location = None
            if uri.startswith("sqlite:///"):
                location = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
            experiment_id = client.create_experiment(experiment, artifact_location=location)
        run = client.create_run(experiment_id, run_name=self.name, tags={"msrec.model": self.cfg.model.name})
        self.mlflow, self.run_id = client, run.info.run_id
        params = flatten(self.cfg.to_dict())
        client.log_batch(self.run_id, params=[Param(k, _param_text(v)) for k, v in sorted(params.items())])

    def _start_tensorboard(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MsrecError("train.tracking.tensorboard_dir: TensorBoard is not installed "
                             "(pip install 'msrec[track]' or tensorboard)") from None
        self.tensorboard = SummaryWriter(log_dir=str(folder))
        self.tensorboard.add_text("config", f"```\n{yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)}```")

    def log(self, values: dict[str, float], step: int) -> None:
        if self.mlflow is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.mlflow.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])
        if self.tensorboard is not None:
            for k, v in values.items():
                self.tensorboard.add_scalar(k, v, step)

    def epoch_end(self, row: dict, report: dict) -> None:
        self.log({"train/loss": row["train_loss"], "train/samples_per_second": row["samples_per_second"],
                  **split_metrics("val", report)}, row["epoch"])

    def finish(self, metrics: dict | None, run_dir: Path | None) -> None:
        """The run's final evaluation blocks (its best epoch's validation, its test split), then the artifact."""
        if metrics is not None:
            step = int(metrics.get("train", {}).get("best_epoch", 0))
            values = {}
            for split, prefix in (("val", "best_val"), ("test", "test")):
                if split in metrics:
                    values.update(split_metrics(prefix, metrics[split]))
            self.log({k: v for k, v in values.items() if not math.isnan(v)}, step)
        if self.mlflow is not None and run_dir is not None:
            self.mlflow.log_artifacts(self.run_id, str(run_dir), "run")
        self.close("FINISHED")

    def close(self, status: str) -> None:
        if self.mlflow is not None:
            self.mlflow.set_terminated(self.run_id, status)
            self.mlflow = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def _param_text(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def start(cfg: Config, run_dir: Path | None, enabled: bool = True) -> Tracker | None:
    """The run's tracker, or None when tracking is off (the default) or this process does not write the run
    (a rank other than 0). The run's name: its run directory's, else `<model>-<time>`."""
    tracking = cfg.train.tracking
    if not enabled or not (tracking.mlflow_uri or tracking.tensorboard_dir):
        return None
    name = run_dir.name if run_dir is not None else f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Tracker(cfg, name)
