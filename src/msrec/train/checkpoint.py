"""Checkpoints of a training run: the whole training state, written atomically every N steps / M minutes,
pruned to the newest K, and read back by `msrec train --resume` (docs/checkpoints.md).

A checkpoint holds the model, the optimizer (the combined dense + row-sparse optimizer's `state_dict`), the
scheduler, early stopping (best score, epoch, scores, weights, stale count), the history so far, the torch
global RNG (dropout; numpy's and Python's too) and the position: the epoch, the steps done in it, the batch-order
generator's state AT THE START of the epoch and the epoch's running loss sum and row count. Resuming regenerates
the epoch's batch order from that generator state and skips the steps done, so no row is lost or repeated and an
in-memory single-process run ends bit-identical to an uninterrupted one. A stream (ParquetStream) draws its row
group order and every shuffle from the same generator, so skipping the steps done reproduces it too.

Files: `<step>.ckpt` in the checkpoint folder (beside the run directory, see msrec.runs.checkpoint_dir). Each is
written to a `.tmp` file, fsynced, then renamed: a kill leaves either the previous checkpoints or the new one,
never half of one; the loader ignores `.tmp` files and the next write deletes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from msrec.config import CheckpointConfig, Config
from msrec.errors import MsrecError

if TYPE_CHECKING:
    from msrec.data.prepare import EncodedData

SUFFIX = ".ckpt"  # msrec.runs.checkpoint_files globs the same suffix (runs may not import train/)
FORMAT = 1
WRITE_SLEEP_ENV = "MSREC_CHECKPOINT_WRITE_SLEEP"  # tests: seconds to sleep inside a write (temp file written, not renamed)
IGNORED_KEYS = ("train.checkpoint", "train.progress")  # may change between a run and its resumption


@dataclass
class FitState:
    """Where a fit stands: what the epoch loop carries from step to step, besides the model and optimizer."""

    epoch: int = 1  # the epoch under way (1-based)
    step: int = 0  # its steps done
    epoch_rng: Tensor | None = None  # the batch-order generator's state at the start of `epoch`
    loss_sum: Tensor | None = None  # the epoch's running loss sum (a tensor: the same float additions on resume)
    seen: int = 0  # the epoch's rows so far
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    train_samples: int = 0
    nan_warned: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def first_difference(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """The first key (dotted) whose value differs, with both values; None when equal."""
    def keys(ident: dict[str, Any]) -> dict[str, Any]:  # config keys as written, then the data fingerprint's
        return {**flatten(ident["config"]), **flatten(ident["data"], "data_fingerprint.")}

    a, b = keys(saved), keys(now)
    for key in dict.fromkeys([*a, *b]):  # in the order written: config, rows, encoder
        if key.startswith(IGNORED_KEYS):
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            return f"`{key}` (checkpoint: {a.get(key, '<unset>')!r}, now: {b.get(key, '<unset>')!r})"
    return None


def identity(config: Config, data: EncodedData) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed: the config and a fingerprint of the data (rows per split
    and a hash of the encoder, i.e. vocabularies and dense statistics fitted on the training rows)."""
    encoder = json.dumps(data.encoder.to_dict(), sort_keys=True, default=str).encode()
    rows = {name: len(split) for name in ("train", "val", "test") if (split := getattr(data, name)) is not None}
    return {"config": config.to_dict(),
            "data": {"rows": rows, "encoder_sha256": hashlib.sha256(encoder).hexdigest()}}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Checkpointer:
    """The checkpoints of one run: when one is due, writing, pruning, loading the newest, deleting them all."""

    def __init__(self, folder: str | Path, cfg: CheckpointConfig, ident: dict[str, Any]):
        self.folder = Path(folder)
        self.cfg = cfg
        self.identity = ident
        self.last_write = time.monotonic()
        self.seconds: list[float] = []  # time of each write (BENCHMARKS.md)

    # ------------------------------------------------------------------ files
    def files(self) -> list[Path]:
        """Complete checkpoints, oldest first (temp files are never listed)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith("."))

    def clear(self) -> None:
        for p in self.folder.glob("*") if self.folder.is_dir() else []:
            p.unlink(missing_ok=True)
        if self.folder.is_dir():
            self.folder.rmdir()

    # ------------------------------------------------------------------ writing
    def due(self, global_step: int) -> bool:
        cfg = self.cfg
        if cfg.every_steps and global_step % cfg.every_steps == 0:
            return True
        return bool(cfg.every_minutes) and time.monotonic() - self.last_write >= 60 * cfg.every_minutes

    def save(self, global_step: int, state: FitState, model: nn.Module, optimizer, scheduler,
             stopper: Any) -> Path:
        t0 = time.perf_counter()
        payload = {"format": FORMAT, "identity": self.identity, "global_step": global_step,
                   "fit": state.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict(), "stopper": stopper.state_dict(), "rng": _rng_state()}
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"{global_step:012d}{SUFFIX}"
        tmp = self.folder / f".{final.name}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
            if os.environ.get(WRITE_SLEEP_ENV):  # a test kills the process here
                time.sleep(float(os.environ[WRITE_SLEEP_ENV]))
        os.replace(tmp, final)
        _fsync_dir(self.folder)
        self._prune()
        self.last_write = time.monotonic()
        self.seconds.append(time.perf_counter() - t0)
        return final

    def _prune(self) -> None:
        for p in self.files()[:-self.cfg.keep]:
            p.unlink(missing_ok=True)
        for p in self.folder.glob(".*.tmp"):  # left by a write that was killed
            p.unlink(missing_ok=True)

    # ------------------------------------------------------------------ reading
    def load_latest(self) -> dict[str, Any] | None:
        """The newest checkpoint, checked against this run's config and data; None when there is none."""
        files = self.files()
        if not files:
            return None
        payload = torch.load(files[-1], map_location="cpu", weights_only=False)  # our own file
        if payload.get("format") != FORMAT:
            raise MsrecError(f"{files[-1]}: checkpoint format {payload.get('format')}, expected {FORMAT}")
        diff = first_difference(payload["identity"], self.identity)
        if diff:
            raise MsrecError(f"{files[-1]}: this checkpoint was made from a different config or data: {diff}; "
                             "resume with the same config and data, or start over with --overwrite")
        return payload

    def restore(self, model: nn.Module, optimizer, scheduler, stopper: Any, device: torch.device) -> FitState | None:
        """Load the newest checkpoint into the model, optimizer, scheduler, early stopping and the RNGs, and
        return where the fit stood; None (nothing changed) when there is no checkpoint."""
        payload = self.load_latest()
        if payload is None:
            return None
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        stopper.load_state_dict(payload["stopper"], device)
        _set_rng_state(payload["rng"])
        fit = FitState(**payload["fit"])
        if fit.loss_sum is not None:
            fit.loss_sum = fit.loss_sum.to(device)
        return fit


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
