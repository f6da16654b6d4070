"""Embedding tables sharded across the ranks with TorchRec (`train.embedding_sharding: torchrec`).

Replicated DDP keeps the whole embedding table on every rank. Here the model's `FeatureEmbedding` table (every
field's rows end to end, one table) is held once across the ranks instead:

- its lookup (`FeatureEmbedding.table(ids)`, ids of any shape) is replaced by `ShardedLookup`, a TorchRec
  `EmbeddingCollection` of that one table (each rank's shards start from their rows of its weights), so no
  model file changes;
- TorchRec's planner picks how to split it (table-, row- or column-wise; one table of many rows: row-wise, so
  each rank holds 1/N of the rows), and `DistributedModelParallel` shards it and wraps the rest of the model
  (MLPs, gates, towers, small gate tables) in DDP, as a replicated run does;
- the table is updated by TorchRec's fused optimizer inside the backward (FBGEMM's kernels), the one that
  `train.embedding_optimizer` names (`rowwise_adagrad` is the same update as msrec's `RowwiseAdagrad`); the
  rest by `train.optimizer`. TorchRec divides the embedding gradients by the world size in its all-to-all,
  as DDP averages the dense ones, so N ranks take the steps of one process (up to summation order);
- each lookup is a collective (an all-to-all of ids and vectors), so every rank must make the same lookups
  in the same order: models with one embedding looked up on every forward (all but `separate`), and
  scoring in lock-step (msrec.train.predict).

After training (best weights restored) the table is gathered back into a plain `nn.Embedding` on every rank, so
test scoring, `model.safetensors` and everything that reads a run directory are those of any run.

TorchRec is an optional extra, imported only here and only when sharding is asked for (INSTALL).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer

from msrec.config import TrainConfig
from msrec.errors import MsrecError
from msrec.train.distributed import Session
from msrec.train.optim import CombinedOptimizer, build_optimizer, table_lr

INSTALL = "pip install 'msrec[torchrec]' && pip install --no-deps torchrec==1.8.0"
TABLE, FEATURE = "features", "ids"  # the one table of the collection and the one feature that looks it up
EMBEDDING_CLASS = "FeatureEmbedding"  # matched by name: the train room does not import nn/


def _torchrec():
    """The torchrec modules used here, or a clear error naming the install command."""
    try:
        import torchrec
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from torchrec.distributed.embedding import EmbeddingCollectionSharder
        from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
        from torchrec.distributed.types import ShardingEnv
    except ImportError as err:
        raise MsrecError(f"train.embedding_sharding: torchrec needs TorchRec, which is not installed ({err}); "
                         f"install it with: {INSTALL}") from None
    return SimpleNamespace(torchrec=torchrec, EmbOptimType=EmbOptimType, Sharder=EmbeddingCollectionSharder,
                           Wrapper=DefaultDataParallelWrapper, DMP=DistributedModelParallel,
                           Planner=EmbeddingShardingPlanner, Topology=Topology, ShardingEnv=ShardingEnv)


def check(cfg: TrainConfig, session: Session) -> None:
    """Refuse, before any data is read, a sharded run that cannot be honoured."""
    if cfg.embedding_sharding != "torchrec":
        return
    if not session.enabled:
        raise MsrecError("train.embedding_sharding: torchrec shares the embedding table among the ranks of a "
                         "distributed run, and this is one process; launch it with `msrec train --nproc N` "
                         "(N >= 2) or torchrun, or set train.embedding_sharding: none")
    if cfg.embedding_optimizer.name == "dense":
        raise MsrecError("train.embedding_optimizer: dense cannot train a table sharded by TorchRec (its rows are "
                         "updated by a fused optimizer inside the backward); use rowwise_adagrad, adam or sgd, "
                         "or train.embedding_sharding: none")
    _torchrec()


class ShardedLookup(nn.Module):
    """Takes the place of `FeatureEmbedding.table`: `lookup(ids)` with ids of any shape gives `[*ids.shape, D]`,
    through a TorchRec `EmbeddingCollection` of one table (one feature, one id per row of the jagged input)."""

    def __init__(self, table: nn.Embedding, device: torch.device):
        super().__init__()
        tr = _torchrec().torchrec
        rows, self.dim = table.weight.shape
        config = tr.EmbeddingConfig(name=TABLE, embedding_dim=self.dim, num_embeddings=rows, feature_names=[FEATURE])
        # On the meta device: no second copy of the table; the shards take their rows of `initial` once made.
        self.collection = tr.EmbeddingCollection(tables=[config], device=torch.device("meta"))
        self.initial: Tensor | None = table.weight.detach()
        self._dtype = table.weight.dtype
        self._jagged = tr.KeyedJaggedTensor

    @property
    def weight(self) -> Tensor:
        """A stand-in with the table's dtype (FeatureEmbedding reads `table.weight.dtype`); the rows are sharded."""
        return torch.empty(0, dtype=self._dtype)

    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)
        n = flat.numel()
        if n == 0:  # TorchRec fails on an empty lookup, and this rank must still take part in the exchange
            flat = flat.new_zeros(1)
        lengths = torch.ones(flat.numel(), dtype=torch.int32, device=flat.device)
        out = self.collection(self._jagged(keys=[FEATURE], values=flat, lengths=lengths))
        return out[FEATURE].values()[:n].view(*ids.shape, self.dim)


def _embedding(model: nn.Module) -> nn.Module:
    """The model's one FeatureEmbedding: every registry model has one, looked up on every forward. Of several,
    some could be looked up on some ranks only (e.g. one per scenario), and a sharded lookup is a collective."""
    found = [m for m in model.modules() if type(m).__name__ == EMBEDDING_CLASS]
    if len(found) != 1:
        raise MsrecError(f"train.embedding_sharding: torchrec shards a model's one {EMBEDDING_CLASS} table; this "
                         f"model has {len(found)} (a sharded lookup is a collective that every rank must make, and "
                         "a model with several may look some up on some ranks only); use "
                         "train.embedding_sharding: none for it")
    return found[0]


def _fused_params(cfg: TrainConfig, tr: SimpleNamespace) -> dict[str, Any]:
    """TorchRec's fused optimizer for `train.embedding_optimizer` (the same rule and learning rate)."""
    kinds = {"rowwise_adagrad": tr.EmbOptimType.EXACT_ROWWISE_ADAGRAD, "adam": tr.EmbOptimType.ADAM,
             "sgd": tr.EmbOptimType.EXACT_SGD}
    params: dict[str, Any] = {"optimizer": kinds[cfg.embedding_optimizer.name], "learning_rate": table_lr(cfg)}
    if cfg.embedding_optimizer.name == "rowwise_adagrad":
        params["eps"] = 1e-8
    return params


@dataclass
class ShardedModel:
    """A model whose FeatureEmbedding table is sharded: `module` is what training steps go through (TorchRec's
    DistributedModelParallel: the sharded table plus DDP around the rest), `optimizer` updates the rest
    (`train.optimizer`, the `replicated` part) and sets the fused table optimizer's learning rate (`sharded`)."""

    module: nn.Module
    optimizer: Optimizer
    embedding: nn.Module
    summary: dict[str, Any] = field(default_factory=dict)  # the plan: how and where the table's rows live

    def unshard(self, device: torch.device) -> None:
        """Gather the table into a plain `nn.Embedding` on every rank (collective), so that the model scores,
        saves and loads as an unsharded one. Each shard is broadcast by its rank straight into its rows of the
        table: no second whole copy (ShardedTensor.gather holds one)."""
        weight = _sharded_weight(self.embedding.table)
        full = torch.empty(*weight.shape, dtype=weight.dtype, device=device)
        local = {tuple(shard.metadata.shard_offsets): shard.tensor for shard in weight.local_shards()}
        with torch.no_grad():
            for meta in weight.metadata().shards_metadata:  # each shard broadcast by its rank into its place
                (row, col), (rows, cols) = meta.shard_offsets, meta.shard_sizes
                place = full[row:row + rows, col:col + cols]
                part = place if place.is_contiguous() else torch.empty_like(place)  # a column shard: a buffer
                if (row, col) in local:
                    part.copy_(local[(row, col)])
                dist.broadcast(part, src=meta.placement.rank())
                place.copy_(part)
        self.embedding.table = nn.Embedding.from_pretrained(full, freeze=False)


def _sharded_weight(lookup: ShardedLookup):
    """The table as a ShardedTensor: this rank's shards and where every shard lives."""
    return lookup.collection.state_dict()[f"embeddings.{TABLE}.weight"]


def _copy_initial(lookup: ShardedLookup) -> None:
    """This rank's shards take their rows (and columns) of the unsharded table's weights, which are then freed."""
    with torch.no_grad():
        for shard in _sharded_weight(lookup).local_shards():
            (row, col), (rows, cols) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            shard.tensor.copy_(lookup.initial[row:row + rows, col:col + cols])
    lookup.initial = None


def _summary(plan, module_path: str, rows: int, dim: int, world_size: int) -> dict[str, Any]:
    """Sharding type and rows per rank of the table (a column-wise shard counts its share of a row)."""
    options = plan.get_plan_for_module(module_path)[TABLE]
    per_rank = [0.0] * world_size
    for shard in options.sharding_spec.shards:
        per_rank[shard.placement.rank()] += shard.shard_sizes[0] * shard.shard_sizes[1] / dim
    return {"type": options.sharding_type, "table_rows": rows, "dim": dim,
            "rows_per_rank": [round(r) for r in per_rank]}


# Warnings of TorchRec and torch about their own internals, printed by every rank, that say nothing to do here.
_NOISE = ("HeuristicalStorageReservation", "`broadcast_buffers` is deprecated", "deprecating ShardedTensor")


def _quiet() -> None:
    logging.getLogger("torchrec").setLevel(logging.ERROR)  # the planner's notes on its own defaults
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)  # is_fx_tracing, called by TorchRec
    for text in _NOISE:
        warnings.filterwarnings("ignore", message=f".*{re.escape(text)}")


def describe(summary: dict[str, Any]) -> str:
    """One line for the log: how the table is split and the rows each rank holds."""
    rows = " / ".join(f"{r:,}" for r in summary["rows_per_rank"])
    return (f"embedding table: {summary['table_rows']:,} rows x {summary['dim']} sharded {summary['type']} by "
            f"TorchRec over {len(summary['rows_per_rank'])} ranks: {rows} rows per rank")


def shard(model: nn.Module, cfg: TrainConfig, session: Session) -> ShardedModel:
    """Shard `model`'s FeatureEmbedding table across the session's ranks (collective: every rank calls it)."""
    check(cfg, session)
    tr = _torchrec()
    _quiet()
    embedding = _embedding(model)
    if embedding.table.weight.dtype != torch.float32:
        raise MsrecError("model.table_dtype bfloat16 and train.embedding_sharding torchrec do not go together yet: "
                         "the sharded table is float32 (use model.table_dtype: float32, or embedding_sharding: none)")
    rows, dim = embedding.table.weight.shape
    embedding.table = ShardedLookup(embedding.table, session.device)
    path = next(name for name, m in model.named_modules() if m is embedding)
    collection = f"{path}.table.collection" if path else "table.collection"
    sharder = tr.Sharder(fused_params=_fused_params(cfg, tr))
    group = dist.GroupMember.WORLD
    world = session.info.world_size  # ranks per machine: torchrun's LOCAL_WORLD_SIZE (several machines)
    topology = tr.Topology(world_size=world, compute_device=session.device.type,
                           local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    plan = tr.Planner(topology=topology).collective_plan(model, [sharder], group)
    dmp = tr.DMP(model, env=tr.ShardingEnv.from_process_group(group), device=session.device, plan=plan,
                    sharders=[sharder],
                    data_parallel_wrapper=tr.Wrapper(static_graph=False, find_unused_parameters=True))
    _copy_initial(embedding.table)
    replicated = build_optimizer(model, cfg, distributed=True, device=session.device)
    optimizer = CombinedOptimizer({"replicated": replicated, "sharded": dmp.fused_optimizer})
    return ShardedModel(dmp, optimizer, embedding, _summary(plan, collection, rows, dim, session.info.world_size))
