"""Checkpoints of a training run: the whole training state, written atomically every N steps / M minutes,
pruned to the newest K, and read back by `msrec train --resume` (docs/checkpoints.md).

A checkpoint holds the model, the optimizer (the combined dense + row-sparse optimizer's `state_dict`), the
scheduler, early stopping (best score, epoch, scores, weights, stale count), and per rank: the history so far,
the global RNGs (torch's: dropout; numpy's and Python's) and the position: the epoch, the steps done in it, the
batch-order generator's state AT THE START of the epoch and the epoch's running loss sum and row count. Resuming
regenerates the epoch's batch order from that generator state and skips the steps done, so no row is lost or
repeated and an in-memory single-process run ends bit-identical to an uninterrupted one. A stream (ParquetStream)
draws its row-group order and every shuffle from the same generator, so skipping the steps done reproduces it too.

Format: `torch.distributed.checkpoint` (DCP), also for one process. A checkpoint is a folder `<step>.ckpt`
(DCP's `.metadata` and one `__<rank>_0.distcp` file per rank) in the checkpoint folder (beside the run directory,
see msrec.runs.checkpoint_dir). Every rank writes its items: a tensor every rank holds under the same key (the
DDP-replicated model and optimizer) is written once, a ShardedTensor / DTensor (TorchRec-sharded tables) by the
ranks that own its shards, and each rank's own position and RNGs under `ranks.<rank>`. Each checkpoint is written
into `.<step>.ckpt.tmp` and renamed by rank 0 once every rank's files and the metadata are written and fsynced:
a kill leaves either the previous checkpoints or the new one, never half of one; the loader ignores `.tmp`
folders and the next run deletes them. A checkpoint resumes on the number of ranks that wrote it (checked).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from msrec.config import CheckpointConfig, Config
from msrec.errors import MsrecError
from msrec.train.distributed import LOCAL, Session

if TYPE_CHECKING:
    from msrec.data.prepare import EncodedData

SUFFIX = ".ckpt"  # msrec.runs.checkpoint_files globs the same suffix (runs may not import train/)
FORMAT = 2  # 1: one torch.save file (single process only)
WRITE_SLEEP_ENV = "MSREC_CHECKPOINT_WRITE_SLEEP"  # tests: seconds to sleep inside a write (written, not renamed)
IGNORED_KEYS = ("train.checkpoint", "train.progress")  # may change between a run and its resumption
AGREE_EVERY = 20  # steps between the ranks' comparisons of their clocks (every_minutes under torchrun)
SHARED = ("meta", "model", "optimizer", "scheduler", "stopper")  # the same on every rank (or sharded by DCP)


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
    """`{"train": {"lr": 0.1}}` -> `{"train.lr": 0.1}` (empty dicts kept as values)."""
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


# ---------------------------------------------------------------------------------------------- DCP
class _FillingLoadPlanner(DefaultLoadPlanner):
    """Loads in place into the template's tensors (so a ShardedTensor / DTensor reads only its local shards) and
    rebuilds from the checkpoint's metadata what the template lacks: an optimizer's lazily created state, plain
    Python values, this rank's position. Only keys under `prefixes` (dotted) are read."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def set_up_planner(self, state_dict, metadata=None, is_coordinator=False) -> None:
        present = set(flatten_state_dict(state_dict)[0])
        for key, item in metadata.state_dict_metadata.items():
            if key in present or not key.startswith(self.prefixes):
                continue
            value = torch.empty(item.size, dtype=item.properties.dtype) \
                if isinstance(item, TensorStorageMetadata) else item  # a placeholder the bytes replace
            set_element(state_dict, metadata.planner_data[key], value)
        super().set_up_planner(state_dict, metadata, is_coordinator)


def save_state(path: str | Path, state: dict[str, Any], session: Session = LOCAL) -> None:
    """Write `state` (nested dicts of tensors and plain values) to the folder `path` with DCP. Every rank calls it
    with its own state: a key every rank holds is written once, a ShardedTensor / DTensor shard by its owner,
    files are fsynced and the metadata is written last (by rank 0), after every rank's data."""
    with warnings.catch_warnings():  # one process: DCP warns that it assumes so
        warnings.simplefilter("ignore")
        dcp.save(state, storage_writer=dcp.FileSystemWriter(path, sync_files=True), no_dist=not session.enabled)


def load_state(path: str | Path, template: dict[str, Any], session: Session = LOCAL,
               prefixes: tuple[str, ...] = ("",)) -> dict[str, Any]:
    """Read the checkpoint at `path` into `template` and return it: the template's tensors are loaded in place
    (they fix the layout: a sharded table's template is its ShardedTensor / DTensor, of which this rank reads its
    shards), everything else under the dotted `prefixes` is rebuilt from the checkpoint. Every rank calls it."""
    reader = dcp.FileSystemReader(path)
    metadata = reader.read_metadata()
    for key in metadata.state_dict_metadata:
        if key.startswith(prefixes):
            template.setdefault(metadata.planner_data[key][0], {})  # dcp.load keeps only the keys it is given
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(template, storage_reader=reader, planner=_FillingLoadPlanner(prefixes), no_dist=not session.enabled)
    return template


def _text(ident: dict[str, Any]) -> str:
    """The identity as one JSON text: DCP would drop its empty dicts (e.g. `data.hash_buckets: {}`)."""
    return json.dumps(ident, default=str)


def _int_keys(optimizer_state: dict[str, Any]) -> dict[str, Any]:
    """DCP writes every dict key as text: an optimizer's per-parameter state is keyed by the parameters' indices."""
    if "state" in optimizer_state and "param_groups" in optimizer_state:
        return {**optimizer_state, "state": {int(k) if isinstance(k, str) and k.isdigit() else k: v
                                             for k, v in optimizer_state["state"].items()}}
    return {k: _int_keys(v) if isinstance(v, dict) else v for k, v in optimizer_state.items()}


def _remove(path: Path) -> None:
    """Delete a checkpoint (or the folder of them): renamed out of sight first, so that a kill while its files are
    deleted leaves no listed, half-deleted checkpoint (only a `.tmp` folder, deleted at the next start)."""
    hidden = path.with_name(f".{path.name.lstrip('.')}.{os.getpid()}.tmp")
    os.replace(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


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
    """The checkpoints of one run: when one is due, writing, pruning, loading the newest, deleting them all. Under
    torchrun every rank holds one (the same folder: with several machines, a file system they share)."""

    def __init__(self, folder: str | Path, cfg: CheckpointConfig, ident: dict[str, Any], session: Session = LOCAL):
        self.folder = Path(folder)
        self.cfg = cfg
        self.identity = ident
        self.session = session
        self.last_write = time.monotonic()
        self.seconds: list[float] = []  # time of each write (benchmarks/checkpoint.py)

    # ------------------------------------------------------------------ files
    def files(self) -> list[Path]:
        """Complete checkpoints, oldest first (temp folders are never listed)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith("."))

    def clear(self) -> None:
        if self.session.writes_run and self.folder.is_dir():
            _remove(self.folder)

    def _remove_temporaries(self) -> None:
        """Left by a write that was killed (rank 0, when no rank is writing)."""
        for p in self.folder.glob(".*.tmp") if self.folder.is_dir() else []:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)

    # ------------------------------------------------------------------ writing
    def due(self, global_step: int) -> bool:
        """Whether a checkpoint is written after this step: every rank must answer the same (the write is
        collective), so under torchrun the ranks compare their clocks, every AGREE_EVERY steps."""
        cfg = self.cfg
        if cfg.every_steps and global_step % cfg.every_steps == 0:
            return True
        if not cfg.every_minutes or (self.session.enabled and global_step % AGREE_EVERY):
            return False
        return self.session.any(time.monotonic() - self.last_write >= 60 * cfg.every_minutes)

    def save(self, global_step: int, state: FitState, model: nn.Module, optimizer, scheduler,
             stopper: Any) -> Path:
        """Every rank: write a checkpoint of the training state after `global_step` steps."""
        t0 = time.perf_counter()
        info = self.session.info
        best = stopper.state_dict()
        payload = {"meta": {"format": FORMAT, "identity": _text(self.identity), "global_step": global_step,
                            "world_size": info.world_size, "best_weights": best["state"] is not None},
                   "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict(), "stopper": best,
                   "ranks": {str(info.rank): {"fit": state.to_dict(), "rng": _rng_state()}}}
        final = self.folder / f"{global_step:012d}{SUFFIX}"
        tmp = self.folder / f".{final.name}.tmp"
        save_state(tmp, payload, self.session)  # returns once every rank's files and the metadata are written
        if self.session.writes_run:
            if os.environ.get(WRITE_SLEEP_ENV):  # a test kills the process here
                time.sleep(float(os.environ[WRITE_SLEEP_ENV]))
            os.replace(tmp, final)
            _fsync_dir(self.folder)
            for p in self.files()[:-self.cfg.keep]:  # pruned once the new one is in place
                _remove(p)
        self.last_write = time.monotonic()
        self.seconds.append(time.perf_counter() - t0)
        return final

    # ------------------------------------------------------------------ reading
    def _newest(self) -> Path | None:
        """Rank 0's newest checkpoint (temporaries of killed writes removed), the same on every rank."""
        def newest() -> Path | None:
            self._remove_temporaries()
            files = self.files()
            return files[-1] if files else None

        path = self.session.decide(newest)
        if path is not None and not path.is_dir():
            raise MsrecError(f"rank {self.session.info.rank}/{self.session.info.world_size}: cannot see checkpoint "
                             f"{path}: with several machines, --out must be on a file system every rank shares")
        return path

    def _check(self, path: Path, meta: dict[str, Any]) -> None:
        if meta.get("format") != FORMAT:
            raise MsrecError(f"{path}: checkpoint format {meta.get('format')}, expected {FORMAT}; "
                             "start over with --overwrite")
        world = self.session.info.world_size
        if meta["world_size"] != world:
            def ranks(n: int) -> str:
                return "1 process" if n == 1 else f"{n} ranks"
            raise MsrecError(f"{path}: this checkpoint was written by {ranks(meta['world_size'])} and this run has "
                             f"{ranks(world)}; resume with {ranks(meta['world_size'])} (msrec train --nproc "
                             f"{meta['world_size']}), or start over with --overwrite")
        diff = first_difference(json.loads(meta["identity"]), json.loads(_text(self.identity)))
        if diff:
            raise MsrecError(f"{path}: this checkpoint was made from a different config or data: {diff}; "
                             "resume with the same config and data, or start over with --overwrite")

    def restore(self, model: nn.Module, optimizer, scheduler, stopper: Any, device: torch.device) -> FitState | None:
        """Every rank: load the newest checkpoint into the model, optimizer, scheduler, early stopping and the RNGs,
        and return where the fit stood; None (nothing changed) when there is no checkpoint."""
        path = self._newest()
        if path is None:
            return None
        if path.is_file():  # format 1
            raise MsrecError(f"{path}: a checkpoint of an earlier msrec (format 1); start over with --overwrite")
        meta = load_state(path, {}, self.session, ("meta.",))["meta"]
        self._check(path, meta)
        rank = str(self.session.info.rank)
        template = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        if meta["best_weights"]:  # laid out as the model's own (a sharded table: its shards)
            template["stopper"] = {"state": {k: v.clone() if isinstance(v, Tensor) else v
                                             for k, v in template["model"].items()}}
        state = load_state(path, template, self.session, tuple(f"{k}." for k in SHARED[1:]) + (f"ranks.{rank}.",))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(_int_keys(state["optimizer"]))
        scheduler.load_state_dict(state["scheduler"])
        stopper.load_state_dict(state["stopper"], device)
        _set_rng_state(state["ranks"][rank]["rng"])
        fit = FitState(**state["ranks"][rank]["fit"])
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
