"""A rank of the DCP checkpoint tests: `checkpoint_worker.py FOLDER` (RANK / WORLD_SIZE / MASTER_* set by the test).

1. `msrec.train.checkpoint.save_state` of a state as TorchRec-sharded tables give it: a table sharded by rows
   across the ranks (a DTensor), a replicated tensor, a per-rank value; `load_state` into a fresh template of the
   same layout: each rank gets its own rows, the replicated tensor and its own value back (FOLDER/sharded).
2. A training checkpoint (`Checkpointer.save`) of a tiny model, for the test that resumes it with another number
   of ranks (FOLDER/run).
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from msrec.config import CheckpointConfig
from msrec.train.checkpoint import Checkpointer, FitState, load_state, save_state
from msrec.train.distributed import DistInfo, Session
from msrec.train.trainer import EarlyStopping

folder = Path(sys.argv[1])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
session = Session(DistInfo(rank, world, rank, 60.0), torch.device("cpu"))
mesh = init_device_mesh("cpu", (world,))
ROWS = 10 * world
table = torch.arange(ROWS * 4, dtype=torch.float32).view(ROWS, 4)
state = {"model": {"table": distribute_tensor(table, mesh, [Shard(0)]), "dense": torch.full((3,), 7.0)},
         "ranks": {str(rank): {"seen": 100 + rank, "rng": torch.tensor([rank])}}}
save_state(folder / "sharded", state, session)

template = {"model": {"table": distribute_tensor(torch.zeros(ROWS, 4), mesh, [Shard(0)]), "dense": torch.zeros(3)}}
loaded = load_state(folder / "sharded", template, session, ("model.", f"ranks.{rank}."))
assert torch.equal(loaded["model"]["table"].to_local(), table.tensor_split(world)[rank]), "this rank's rows"
assert torch.equal(loaded["model"]["dense"], torch.full((3,), 7.0))
assert loaded["ranks"] == {str(rank): {"seen": 100 + rank, "rng": torch.tensor([rank])}}, loaded["ranks"]


model = torch.nn.Linear(3, 1)
optimizer = torch.optim.Adam(model.parameters())
stopper = EarlyStopping(patience=1)
stopper.update(1, 0.5, torch.rand(4, 1), model)  # best weights so far
checkpoints = Checkpointer(folder / "run", CheckpointConfig(every_steps=1), {"config": {}, "data": {}}, session)
checkpoints.save(1, FitState(epoch_rng=torch.Generator().get_state(), loss_sum=torch.zeros(())), model, optimizer,
                 torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), stopper)
dist.barrier()
dist.destroy_process_group()
# Everything is checked and written: leave without the interpreter's teardown, where a gloo / device-mesh thread
# was seen, once in many runs, to abort the process ("terminate called without an active exception", -6).
sys.stdout.flush()
os._exit(0)
