"""Early stopping: the best epoch so far and its weights.

The best weights are a second copy of the model. For a model with 10^7 embedding rows that copy is as large as
the table itself, so keeping it in memory doubles the peak RSS (measured by benchmarks/vocab.py: 1.75-1.83x
the table). Past `spill_bytes` the copy is therefore written to a file (safetensors, in a private temporary
folder, replaced atomically) and read back only to restore or checkpoint it; below, it stays in tensors
allocated once on the model's device (no host copy, no deepcopy per epoch).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from msrec.data.io import read_tensors_into

SPILL_BYTES = 256 * 2**20  # best weights larger than this go to a file


def _plain(value: Any) -> bool:
    """A tensor that goes to the spill file; a table sharded by TorchRec (a ShardedTensor: 1/N of it on this
    rank) stays in memory."""
    return isinstance(value, Tensor) and not hasattr(value, "local_shards")


def _nbytes(state: dict[str, Any]) -> int:
    return sum(v.numel() * v.element_size() for v in state.values() if _plain(v))


class EarlyStopping:
    """The best epoch so far (score, number, validation scores, weights) and the epochs since."""

    def __init__(self, patience: int, spill_bytes: int = SPILL_BYTES):
        self.patience = patience
        self.spill_bytes = spill_bytes
        self.score = -math.inf
        self.epoch = 0
        self.scores: Tensor | None = None
        self.state: dict[str, Any] | None = None  # in memory; or, spilled, only the non-tensor entries
        self._folder: str | None = None  # the spill folder (when spilled)
        self.stale = 0

    def update(self, epoch: int, score: float, scores: Tensor, model: nn.Module) -> bool:
        """Record an epoch; True when it beats the best so far. The first epoch is kept even when its score
        is undefined, so that there are always weights to restore."""
        improved = score > self.score
        if improved or self.state is None:
            self.score, self.epoch, self.scores, self.stale = score, epoch, scores, 0
            self._keep(model.state_dict())
        else:
            self.stale += 1
        return improved

    @property
    def stop(self) -> bool:
        return self.stale >= self.patience

    @property
    def spilled(self) -> bool:
        return self._folder is not None

    def _keep(self, state: dict[str, Any]) -> None:
        if self.spilled or _nbytes(state) > self.spill_bytes:
            self._spill(state)
        elif self.state is None:
            self.state = {k: v.clone() if isinstance(v, Tensor) else v for k, v in state.items()}
        else:
            for k, v in state.items():
                if isinstance(v, Tensor):
                    self.state[k].copy_(v)
                else:
                    self.state[k] = v

    def _spill(self, state: dict[str, Any]) -> None:
        if self._folder is None:
            self._folder = tempfile.mkdtemp(prefix="msrec-best-weights-")
        tensors = {k: v.detach().contiguous().cpu() for k, v in state.items() if _plain(v)}
        part = Path(self._folder) / "best.safetensors.part"
        save_file(tensors, part)
        os.replace(part, Path(self._folder) / "best.safetensors")  # a kill mid-write keeps the previous best
        self.state = {k: v.clone() if isinstance(v, Tensor) else v for k, v in state.items() if not _plain(v)}

    def weights(self) -> dict[str, Any] | None:
        """The best weights as a state dict (read back from the file when spilled)."""
        if self.state is None or not self.spilled:
            return self.state
        return {**load_file(Path(self._folder) / "best.safetensors"), **self.state}

    def restore(self, model: nn.Module) -> None:
        if not self.spilled:
            model.load_state_dict(self.state)
            return
        live = model.state_dict()  # the model's own tensors, written in place
        if not read_tensors_into(Path(self._folder) / "best.safetensors", {k: v for k, v in live.items() if _plain(v)}):
            model.load_state_dict(self.weights())  # another layout (or device): load_state_dict's own checks
            return
        if self.state:  # sharded tables and non-tensor entries (extra states), kept in memory
            model.load_state_dict({**live, **self.state})

    def close(self) -> None:
        """Removes the spill file (the best weights are then only those restored into the model)."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder, self.state = None, None

    def __del__(self) -> None:
        self.close()

    def state_dict(self) -> dict[str, Any]:
        return {"score": self.score, "epoch": self.epoch, "scores": self.scores, "state": self.weights(),
                "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.score, self.epoch, self.stale = state["score"], state["epoch"], state["stale"]
        self.scores = state["scores"].to(device) if state["scores"] is not None else None
        self.close()
        if state["state"] is not None:
            self._keep({k: v.to(device) if isinstance(v, Tensor) else v for k, v in state["state"].items()})
