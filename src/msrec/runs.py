"""The run directory: config.yaml, encoder.json, model.safetensors, metrics.json, self-contained.

It is written into a hidden sibling folder and renamed into place only when complete, so a crash
leaves no half-written run and never touches an earlier run at the same path.
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

from msrec.config import Config, parse_config, yaml_error
from msrec.data.encode import Encoder
from msrec.errors import MsrecError
from msrec.models.registry import build_model

RUN_FILES = ("config.yaml", "encoder.json", "model.safetensors", "metrics.json")


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


def write_run(path: Path, config: Config, encoder: Encoder, model: nn.Module, metrics: dict,
              overwrite: bool = False) -> Path:
    path = Path(path)
    check_run_dir_free(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        (tmp / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        encoder.save(tmp / "encoder.json")
        save_model(model, str(tmp / "model.safetensors"))
        (tmp / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2))
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

    def encode(self, rows: Any) -> dict[str, Any]:
        """Raw rows -> the exported model's inputs by name (numpy), as `msrec.serve.InputEncoder` makes them."""
        from msrec.serve.inputs import InputEncoder

        return InputEncoder(self).encode(rows)


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
    model = build_model(config.model.name, encoder.spec(), config.model.options())
    try:
        missing_keys, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except RuntimeError as err:  # torch: the weights' shapes disagree with the model encoder.json describes
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line),
                      str(err).splitlines()[0])
        raise MsrecError(f"{path / 'model.safetensors'}: does not match encoder.json and the config ({detail})") \
            from None
    except (SafetensorError, OSError, ValueError) as err:
        raise MsrecError(f"{path / 'model.safetensors'}: cannot be loaded ({str(err).splitlines()[0]})") from None
    if missing_keys or unexpected:
        raise MsrecError(f"{path / 'model.safetensors'}: does not match model {config.model.name} "
                         f"(missing {sorted(missing_keys)[:3]}, unexpected {sorted(unexpected)[:3]})")
    model.eval()
    try:
        metrics = json.loads((path / "metrics.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MsrecError(f"{path / 'metrics.json'}: not valid JSON ({err})") from None
    return Run(path, config, encoder, model, metrics)
