"""Checkpoints across ranks through torch.distributed.checkpoint (gloo, 2 processes started by hand): each rank
writes its part and reads back its own (a table sharded by rows, as TorchRec shards tables: its rows; a replicated
tensor: written once; its position and RNGs), and a checkpoint resumes only on the number of ranks that wrote it.
The SIGKILL-and-resume test of a 2-rank training job is in tests/test_checkpoint.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

from msrec.config import CheckpointConfig
from msrec.errors import MsrecError
from msrec.train.checkpoint import Checkpointer

WORKER = Path(__file__).resolve().parent / "checkpoint_worker.py"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dcp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, str(WORKER), str(folder)], env={**env, "RANK": str(r),
                              "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0, 1)]
    for r, proc in enumerate(ranks):
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"rank {r}:\n{output[-4000:]}"
    return folder


def _files(path: Path) -> dict[str, list[tuple[int, str]]]:
    """{key: [(first row, file), ...]} of a DCP checkpoint's stored items."""
    out: dict[str, list[tuple[int, str]]] = {}
    for index, item in FileSystemReader(path).read_metadata().storage_data.items():
        row = index.offset[0] if index.offset is not None and len(index.offset) else 0
        out.setdefault(index.fqn, []).append((row, item.relative_path))
    return {k: sorted(v) for k, v in out.items()}


def test_each_rank_writes_and_reads_back_its_part(written):
    files = _files(written / "sharded")  # the worker checked what each rank read back
    assert files["model.table"] == [(0, "__0_0.distcp"), (10, "__1_0.distcp")]  # each rank its rows
    assert len(files["model.dense"]) == 1  # replicated: written once
    for r in (0, 1):
        assert files[f"ranks.{r}.rng"] == [(0, f"__{r}_0.distcp")]
    # a training checkpoint: the DDP-replicated model and optimizer once, each rank's position in its own file
    files = _files(written / "run" / "000000000001.ckpt")
    assert all(len(files[k]) == 1 for k in files if k.startswith(("model.", "optimizer.")))
    assert {path for k, v in files.items() if k.startswith("ranks.1.") for _, path in v} == {"__1_0.distcp"}


def test_a_checkpoint_resumes_only_on_the_number_of_ranks_that_wrote_it(written):
    model = torch.nn.Linear(3, 1)
    checkpoints = Checkpointer(written / "run", CheckpointConfig(every_steps=1), {"config": {}, "data": {}})
    with pytest.raises(MsrecError, match=r"written by 2 ranks and this run has 1 process; resume with 2 ranks "
                                         r"\(msrec train --nproc 2\), or start over with --overwrite"):
        checkpoints.restore(model, torch.optim.Adam(model.parameters()), None, None, torch.device("cpu"))
