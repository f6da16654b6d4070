"""A training worker for the distributed tests: `worker.py OUT_DIR CONFIG [CONFIG ...]`.

Launched once per rank (by torchrun, or by a test that sets RANK / WORLD_SIZE / MASTER_* itself). Trains
each config with `msrec.api.train`, saving the run to OUT_DIR/<config stem> (rank 0 only, by msrec), and
writes this rank's metrics to OUT_DIR/<config stem>.rank<r>.json and its model's buffers to .buffers.pt.

MSREC_TEST_CRASH_RANK=r makes rank r fail at its first validation (`Trainer.validate`):
MSREC_TEST_CRASH_MODE=raise (default) raises, `hang` sleeps, so that the other ranks' handling of a dead or
silent peer can be tested.

With `train.embedding_sharding: torchrec`, each rank also writes the rows of the table it held while training
(read from its local shards) to OUT_DIR/<config stem>.rank<r>.held.json.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch

import msrec.api
from msrec.train import sharding
from msrec.train.trainer import Trainer

rank = int(os.environ.get("RANK", "0"))
if os.environ.get("MSREC_TEST_CRASH_RANK") == str(rank):
    def _fail(self, table):
        if os.environ.get("MSREC_TEST_CRASH_MODE", "raise") == "hang":
            time.sleep(600)
        raise RuntimeError(f"injected crash on rank {rank}")

    Trainer.validate = _fail

held: dict[str, float] = {}
_shard = sharding.shard


def _recording_shard(model, cfg, session):
    """sharding.shard, noting the rows of the table this rank holds (a column shard: its share of a row)."""
    sharded = _shard(model, cfg, session)
    weight = sharded.embedding.table.collection.state_dict()[f"embeddings.{sharding.TABLE}.weight"]
    held["rows"] = sum(s.tensor.numel() for s in weight.local_shards()) / weight.shape[1]
    held["table_rows"] = weight.shape[0]
    return sharded


sharding.shard = _recording_shard

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
for config in sys.argv[2:]:
    name = Path(config).stem
    result = msrec.api.train(config, out=out / name)
    (out / f"{name}.rank{rank}.json").write_text(json.dumps(result.metrics))
    torch.save(dict(result.model.named_buffers()), out / f"{name}.rank{rank}.buffers.pt")
    if held:
        (out / f"{name}.rank{rank}.held.json").write_text(json.dumps(held))
        held.clear()
