"""The run directory: config.yaml, encoder.json, model.safetensors, metrics.json, self-contained.

It is written into a hidden sibling folder and renamed into place only when complete, so a crash
leaves no half-written run and never touches an earlier run at the same path.

It does not depend on the folder `train` was run from: `config.yaml` stores the data paths absolute, so
`evaluate` / `predict` work from any folder and after the run directory is moved or copied. (Paths relative
to the run directory would break on the common move, a run archived without its data; an absolute path
breaks only when the data move, and then `msrec evaluate RUN --data FILE` names them.)

metrics.json (format 2): `{"format": 2, "val": SPLIT, "test": SPLIT, "train": {...}, "model": name}`, every
SPLIT `{"tasks": {task: block}, "macro_auc": mean over tasks, "overall": {"auc", "logloss"}}` for any
number of tasks. msrec 0.1 wrote a one-task SPLIT as the task's block itself: `load_run` upgrades it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from msrec.config import DATA_PATHS, Config, parse_config, yaml_error
from msrec.data.encode import Encoder
from msrec.data.io import read_tensors_into
from msrec.errors import MsrecError
from msrec.models.registry import build_model, get_entry

RUN_FILES = ("config.yaml", "encoder.json", "model.safetensors", "metrics.json")
METRICS_FORMAT = 2


def json_safe(obj: Any) -> Any:
    """NaN / inf become null, so metrics files are valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def default_run_dir(model_name: str, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{model_name}-{stamp}"
    k = 1
    while path.exists():
        k += 1
        path = Path(root) / f"{model_name}-{stamp}-{k}"
    return path


def check_run_dir_free(path: Path, overwrite: bool) -> None:
    """Fail before training, not after, when the output folder holds something the user saved."""
    if path.exists() and not overwrite and (not path.is_dir() or any(path.iterdir())):
        raise MsrecError(f"{path}: already exists; choose another --out or pass --overwrite")


def checkpoint_dir(run_dir: str | Path) -> Path:
    """Where a run's checkpoints live while it trains: a hidden folder beside the run directory (which is
    written only at the end), e.g. `runs/.dnn-1.checkpoints` for `runs/dnn-1` (msrec.train.checkpoint)."""
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.checkpoints"


def checkpoint_files(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of the run at `run_dir` (`*.ckpt`: temp files are never listed)."""
    folder = checkpoint_dir(run_dir)
    return sorted(folder.glob("[!.]*.ckpt")) if folder.is_dir() else []


def is_complete_run(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in RUN_FILES)


def prepare_run_dir(path: Path, overwrite: bool, resume: bool) -> bool:
    """Check the output folder before training, given `--overwrite` / `--resume`; True when training continues
    from a checkpoint. An interrupted run (checkpoints, no finished run) is an error without `--resume`;
    `--overwrite` starts over (its checkpoints are deleted). `--resume` with no checkpoint starts from scratch."""
    path = Path(path)
    interrupted = bool(checkpoint_files(path)) and not is_complete_run(path)
    if resume:
        if interrupted:
            return True
        if is_complete_run(path) and not overwrite:
            raise MsrecError(f"{path}: a finished run, nothing to resume; choose another --out or pass --overwrite")
        check_run_dir_free(path, overwrite)
    elif interrupted and not overwrite:
        raise MsrecError(f"{path}: an interrupted run (checkpoints in {checkpoint_dir(path)}); continue it with "
                         "--resume, or start over with --overwrite")
    else:
        check_run_dir_free(path, overwrite)
    if checkpoint_dir(path).exists():  # starting over: stale checkpoints must not be resumed later
        shutil.rmtree(checkpoint_dir(path))
    return False


def absolute_data_paths(config: Config) -> Config:
    """The config with its data paths absolute, as read from the current folder (see the module's doc)."""
    data = config.data
    paths = {k: os.path.abspath(v) for k in DATA_PATHS if (v := getattr(data, k)) and not os.path.isabs(v)}
    return config.model_copy(update={"data": data.model_copy(update=paths)}) if paths else config


def upgrade_metrics(metrics: dict, tasks: list[str]) -> dict:
    """A metrics.json of any format as format 2: a format 1 (msrec 0.1) one-task split block, the task's
    block itself, is wrapped as `{"tasks": {task: block}, "macro_auc", "overall": {"auc", "logloss"}}`."""
    if metrics.get("format", 1) >= METRICS_FORMAT:
        return metrics
    out = {"format": METRICS_FORMAT, **{k: v for k, v in metrics.items() if k != "format"}}
    for split in ("val", "test"):
        block = metrics.get(split)
        if isinstance(block, dict) and "tasks" not in block:
            out[split] = {"tasks": {tasks[0]: block}, "macro_auc": block.get("macro_auc"),
                          "overall": {k: block.get("overall", {}).get(k) for k in ("auc", "logloss")}}
    return out


def write_run(path: Path, config: Config, encoder: Encoder, model: nn.Module, metrics: dict,
              overwrite: bool = False) -> Path:
    path = Path(path)
    check_run_dir_free(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        config_text = yaml.safe_dump(absolute_data_paths(config).to_dict(), sort_keys=False)
        (tmp / "config.yaml").write_text(config_text)
        encoder.save(tmp / "encoder.json")
        save_model(model, str(tmp / "model.safetensors"))
        (tmp / "metrics.json").write_text(json.dumps(json_safe({"format": METRICS_FORMAT, **metrics}), indent=2))
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


@dataclass
class Run:
    path: Path
    config: Config
    encoder: Encoder
    model: nn.Module
    metrics: dict


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise MsrecError(f"{path}: run directory not found")
    missing = [f for f in RUN_FILES if not (path / f).is_file()]
    if missing:
        raise MsrecError(f"{path}: not a complete run directory (missing {', '.join(missing)})")
    try:
        raw = yaml.safe_load((path / "config.yaml").read_text())
    except yaml.YAMLError as err:
        raise MsrecError(f"{path / 'config.yaml'}: not valid YAML ({yaml_error(err)})") from None
    config = parse_config(raw, str(path / "config.yaml"))
    encoder = Encoder.load(path / "encoder.json")
    model = _load_model(path, config, encoder)
    if model is None and encoder.spec().levels is not None and "level_sharing" not in config.model.options() \
            and "level_sharing" in get_entry(config.model.name).options.model_fields:
        # A hierarchical run written before per-scenario parameters were shared by level (their default since):
        # its flat tensors load into the model built as it was.
        config.model.__pydantic_extra__["level_sharing"] = False
        model = _load_model(path, config, encoder)
        if model is None:
            config.model.__pydantic_extra__.pop("level_sharing")
    if model is None:
        _load_model(path, config, encoder, raise_mismatch=True)
    model.eval()
    try:
        metrics = json.loads((path / "metrics.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MsrecError(f"{path / 'metrics.json'}: not valid JSON ({err})") from None
    return Run(path, config, encoder, model, upgrade_metrics(metrics, list(encoder.schema.labels)))


def _load_model(path: Path, config: Config, encoder: Encoder, raise_mismatch: bool = False) -> nn.Module | None:
    """The run's model with its weights; None where their names disagree with the model (an error with
    `raise_mismatch`)."""
    model = build_model(config.model.name, encoder.spec(), config.model.options())
    try:
        if read_tensors_into(path / "model.safetensors", model.state_dict()):  # no second copy of a large table
            missing_keys, unexpected = [], []
        else:  # another layout (an older run's modules): load_model's checks and the models' loading hooks
            missing_keys, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except RuntimeError as err:  # torch: the weights' shapes disagree with the model encoder.json describes
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line),
                      str(err).splitlines()[0])
        raise MsrecError(f"{path / 'model.safetensors'}: does not match encoder.json and the config ({detail})") \
            from None
    except (SafetensorError, OSError, ValueError) as err:
        raise MsrecError(f"{path / 'model.safetensors'}: cannot be loaded ({str(err).splitlines()[0]})") from None
    if (missing_keys or unexpected) and raise_mismatch:
        raise MsrecError(f"{path / 'model.safetensors'}: does not match model {config.model.name} "
                         f"(missing {sorted(missing_keys)[:3]}, unexpected {sorted(unexpected)[:3]})")
    return None if missing_keys or unexpected else model
