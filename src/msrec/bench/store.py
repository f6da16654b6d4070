"""The resumable run store: `OUT/runs/<label>--seed<seed>.json` (config, metrics, times) and `.npz` (the
evaluated split's scores, labels and scenario ids, for the paired bootstrap).

Both files are written atomically (a temporary file renamed into place; the scores before the JSON), so a
run is done exactly when its JSON exists and a killed grid resumes where it stopped. A failed run writes
`<id>.failed.json` (its traceback) and is retried on the next resume.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msrec.bench.spec import Grid
from msrec.config import Config
from msrec.errors import MsrecError
from msrec.runs import json_safe, upgrade_metrics


@dataclass
class RunRecord:
    """One finished run as stored in the output folder."""

    id: str
    label: str
    model: str
    seed: int
    tasks: list[str]
    scenarios: list[str]
    split: str  # the evaluated split: test, or val where the data has no test split
    metrics: dict  # metrics.json's shape (records stored by msrec 0.1 are upgraded when read)
    wall_seconds: float
    cpu_seconds: float  # process CPU time of the run (all threads): comparable on a shared, busy machine
    scores_path: Path

    def block(self, task: str) -> dict:
        """The evaluated split's metrics block of one task."""
        return self.metrics[self.split]["tasks"][task]

    def arrays(self) -> dict[str, np.ndarray]:
        with np.load(self.scores_path) as z:
            return {k: z[k] for k in z.files}


@dataclass
class Failure:
    id: str
    label: str
    model: str
    seed: int
    error: str


def config_key(cfg: Config) -> Any:
    """A run's config as stored (JSON types), to tell whether a stored run belongs to the spec now."""
    return json.loads(json.dumps(cfg.to_dict(), sort_keys=True))


def _atomic_write(path: Path, data: bytes) -> None:
    """Written beside its target and renamed: a reader (or a resume) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _nan_back(obj: Any) -> Any:
    """JSON stores a missing metric (NaN) as null; read it back as NaN."""
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: _nan_back(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_back(v) for v in obj]
    return obj


class RunStore:
    """The `runs/` folder of a benchmark's output."""

    def __init__(self, out: Path):
        self.dir = out / "runs"
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(".*.tmp"):  # left by a killed run; never a finished result
            stale.unlink(missing_ok=True)

    def done(self, rid: str) -> bool:
        return (self.dir / f"{rid}.json").is_file()

    def stored_config(self, rid: str) -> Any:
        try:
            return json.loads((self.dir / f"{rid}.json").read_text()).get("config")
        except (json.JSONDecodeError, OSError):
            return None

    def save(self, rid: str, record: dict, arrays: dict[str, np.ndarray]) -> None:
        """The scores first: a run with a JSON is complete."""
        _atomic_write(self.dir / f"{rid}.npz", _npz_bytes(arrays))
        _atomic_write(self.dir / f"{rid}.json", json.dumps(json_safe(record), indent=1).encode())
        (self.dir / f"{rid}.failed.json").unlink(missing_ok=True)

    def copy(self, source: str, rid: str, label: str, config: Any) -> None:
        """Store run `source`'s results as run `rid` of `label`: a tuned model whose best trial was its config as
        given has that very config, so its runs are not trained twice. Stored with `config` (`config_key` of
        rid's own, every option spelt out as in best.yaml), so that a rerun of the spec finds it is rid's."""
        record = json.loads((self.dir / f"{source}.json").read_text())
        _atomic_write(self.dir / f"{rid}.npz", (self.dir / f"{source}.npz").read_bytes())
        _atomic_write(self.dir / f"{rid}.json", json.dumps({**record, "label": label, "copied_from": source,
                                                            "config": config}, indent=1).encode())

    def save_failure(self, rid: str, failure: dict) -> None:
        _atomic_write(self.dir / f"{rid}.failed.json", json.dumps(failure, indent=1).encode())

    def load(self, rid: str) -> RunRecord:
        path = self.dir / f"{rid}.json"
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise MsrecError(f"{path}: not valid JSON ({err}); delete it to redo the run") from None
        return RunRecord(id=rid, label=raw["label"], model=raw["model"], seed=raw["seed"], tasks=raw["tasks"],
                         scenarios=raw["scenarios"], split=raw["split"],
                         metrics=upgrade_metrics(_nan_back(raw["metrics"]), raw["tasks"]),
                         wall_seconds=raw["wall_seconds"], cpu_seconds=raw.get("cpu_seconds", math.nan),
                         scores_path=path.with_suffix(".npz"))

    def collect(self, grid: Grid) -> tuple[list[RunRecord], list[Failure]]:
        """The grid's finished runs (in grid order) and its failures, read back from the folder."""
        records, failures = [], []
        for rid, label, seed in grid.order:
            failed = self.dir / f"{rid}.failed.json"
            if self.done(rid):
                records.append(self.load(rid))
            elif failed.is_file():
                raw = json.loads(failed.read_text())
                failures.append(Failure(rid, label, raw["model"], seed, raw["error"]))
        return records, failures
