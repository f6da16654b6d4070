"""Distributed training on PyTorch's own engine: `torchrun` + DistributedDataParallel.

torchrun (or any launcher that sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT) starts one
process per rank; `setup()` reads that environment and joins the process group: gloo on CPU, NCCL when the
rank has a GPU. Without that environment (a plain `msrec train`) training is the single-process path.

The rank logic stays in this room: `api.train` enters `session(cfg.train)` once and hands the `Session` to
the trainer; the trainer and its scorer ask the session for every collective (same-data check, DDP wrapper,
steps per epoch, epoch totals, buffer broadcast, score gathers, rank-0 reports), and `Session.writes_run`
says which process writes the run directory.

How the work is split (see docs/distributed.md):
- `train.batch_size` is the GLOBAL batch. Every rank draws the same seeded permutation and takes its
  contiguous share (`tensor_split`) of each global batch, so 1 and N ranks step through the same global
  batches; the loss is scaled so that DDP's gradient average equals the single-process gradient.
- validation / test rows are split in contiguous shards, each rank scores its shard, the scores are
  gathered (all_gather) and rank 0 computes the metrics, which it broadcasts: every rank then takes the same
  early-stopping decision from the same numbers.
- only rank 0 prints and writes the run directory.

A rank that crashes makes the others fail too: torchrun stops the remaining workers, and any collective
that waits on a dead or stuck peer gives up after `train.dist_timeout` seconds (the process-group timeout)
with an error naming the rank, instead of hanging.
"""

from __future__ import annotations

import atexit
import gc
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from msrec.config import TrainConfig
from msrec.errors import MsrecError

if TYPE_CHECKING:
    from msrec.data.prepare import EncodedData
    from msrec.data.table import BatchSource

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout_s: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def env_info() -> DistInfo:
    """Rank and world size from the launcher's environment (torchrun sets these); single-process if absent."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise MsrecError(f"distributed launch: RANK / WORLD_SIZE / LOCAL_RANK must be integers ({err})") from None
    if world < 1 or not 0 <= rank < world:
        raise MsrecError(f"distributed launch: RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return DistInfo(rank, world, local)


def resolve_device(choice: str, info: DistInfo = SINGLE) -> torch.device:
    """`auto`: this rank's GPU when CUDA is present, else the CPU. `cuda` without a GPU is an error."""
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MsrecError("train.device: cuda was asked for but no CUDA device is available (use auto or cpu)")
    count = torch.cuda.device_count()
    if info.local_rank >= count:
        raise MsrecError(f"train.device: local rank {info.local_rank} has no GPU ({count} visible); "
                         f"launch at most {count} processes per node")
    return torch.device("cuda", info.local_rank)


def setup(timeout_s: float, device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else the single-process info.

    Idempotent: a second `msrec.train()` in the same worker reuses the group.
    """
    info = env_info()
    if not info.enabled:
        return SINGLE
    info = DistInfo(info.rank, info.world_size, info.local_rank, timeout_s)
    if dist.is_initialized():
        return info
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise MsrecError("distributed launch: WORLD_SIZE > 1 but MASTER_ADDR / MASTER_PORT are not set; "
                         "launch with torchrun (see docs/distributed.md)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                **({"device_id": device} if device.type == "cuda" else {}))
    except (RuntimeError, ValueError) as err:
        raise MsrecError(f"rank {info.rank}/{info.world_size}: cannot join the process group at "
                         f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout_s:.0f}s "
                         f"({_first_line(err)})") from None
    atexit.register(_shutdown)
    return info


def _shutdown() -> None:
    """Leave the group while the interpreter is whole: a DDP reducer collected during interpreter shutdown
    takes the GIL from a gloo thread and aborts the process (exit code -6 after a finished run)."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextmanager
def peer_failures(info: DistInfo):
    """Turn a collective that failed (a peer died, or stayed silent past the timeout) into one clear error."""
    try:
        yield
    except RuntimeError as err:  # gloo reports a dead or silent peer as a plain RuntimeError
        if not info.enabled or not (isinstance(err, dist.DistError) or any(k in str(err) for k in _PEER_ERRORS)):
            raise
        raise MsrecError(f"rank {info.rank}/{info.world_size}: distributed training stopped: another rank "
                         f"crashed or did not answer within train.dist_timeout={info.timeout_s:.0f}s "
                         f"({_first_line(err)}); see the other ranks' output for the cause") from None


# What the backends' errors say when a peer died or stayed silent (the other errors pass through unchanged).
_PEER_ERRORS = ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset", "Timed out", "timed out")


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: each rank's last training steps updated
    its own copy, and DDP copies rank 0's only at the next training forward, so ranks would evaluate, and
    keep as best, different models."""
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def all_reduce_sum(x: Tensor) -> Tensor:
    out = x.clone()
    dist.all_reduce(out)
    return out


def all_reduce_min(value: int, device: torch.device) -> int:
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def gather_rows(local: Tensor, sizes: list[int], device: torch.device) -> Tensor:
    """Concatenate every rank's `local` rows (rank order); `sizes[r]` is rank r's row count (known to all).

    all_gather needs equal shapes, so shards are padded to the largest and trimmed after.
    """
    width = max(sizes)
    padded = torch.zeros(width, *local.shape[1:], dtype=local.dtype, device=device)
    padded[: len(local)] = local.to(device)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).cpu()


def broadcast_object(obj, info: DistInfo):
    """Rank 0's `obj` on every rank (small Python objects: a metrics report)."""
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_same_data(info: DistInfo, summary: dict[str, Any], device: torch.device) -> None:
    """Every rank must have read the same data (same row counts, same fitted encoder): ranks with other
    files would take different numbers of steps (a hang), build other shapes, or have their scores paired
    with rank 0's labels. Every rank learns of any mismatch and stops with the same message."""
    if not info.enabled:
        return
    reference = broadcast_object(summary, info)
    differs = [k for k in summary if summary[k] != reference.get(k)]
    flags = all_reduce_sum(torch.tensor([float(bool(differs))], device=device))  # NCCL: a device tensor
    if differs:
        raise MsrecError(f"rank {info.rank}/{info.world_size}: its data differ from rank 0's ("
                         + "; ".join(f"{k}: {summary[k]} here, {reference.get(k)} on rank 0" for k in differs)
                         + "); every rank must read the same files")
    if flags.item() > 0:
        raise MsrecError(f"rank {info.rank}/{info.world_size}: another rank's data differ from rank 0's "
                         "(see its message); every rank must read the same files")


@dataclass(frozen=True)
class Session:
    """This process's part in a training job: its rank (one process without torchrun) and its device. The
    trainer and the scorer ask it for every collective, so that no caller needs to know about ranks."""

    info: DistInfo = SINGLE
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.info.enabled

    @property
    def writes_run(self) -> bool:
        """Whether this process prints and writes the run directory: rank 0 alone does."""
        return self.info.is_main

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module training steps go through: DDP (gradient averaging) when distributed. Per-scenario
        modules get no gradient on a rank whose share lacks the scenario, hence find_unused_parameters."""
        if not self.enabled:
            return model
        return nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)

    def on_main(self, compute: Callable[[], T]) -> T:
        """`compute()` on rank 0 and its result on every rank (a metrics report: computed once)."""
        if not self.enabled:
            return compute()
        return broadcast_object(compute() if self.info.is_main else None, self.info)

    def decide(self, compute: Callable[[], T]) -> T:
        """`compute()` on rank 0 and its result, or the MsrecError it raised, on every rank: a decision the ranks
        must share (what to resume from) and that may fail without leaving the other ranks waiting."""
        if not self.enabled:
            return compute()
        try:
            outcome = (compute() if self.info.is_main else None, None)
        except MsrecError as err:
            outcome = (None, str(err))
        result, error = broadcast_object(outcome, self.info)
        if error is not None:
            raise MsrecError(error)
        return result

    def any(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank (one all-reduce when distributed): a choice every rank must make alike."""
        if not self.enabled:
            return flag
        return all_reduce_sum(torch.tensor([float(flag)], device=self.device)).item() > 0

    def share(self, train: BatchSource, batch_size: int) -> tuple[BatchSource, int]:
        """This process's part of the training rows and the steps per epoch that every rank takes (the
        fewest any rank can: a rank taking more would wait forever on its peers' gradients)."""
        if not self.enabled:
            return train, train.steps(batch_size)
        source = train.shard(self.info.rank, self.info.world_size)
        steps = all_reduce_min(source.steps(batch_size), self.device)
        if steps == 0:
            raise MsrecError(f"train: a rank has no training rows ({len(train):,} rows for {self.info.world_size} "
                             "ranks); use fewer ranks (streaming: more, smaller row groups)")
        return source, steps

    def epoch_totals(self, loss_sum: Tensor, rows: int) -> tuple[Tensor, int]:
        """An epoch's summed loss (mean over ranks) and its rows (total over ranks): one all-reduce."""
        if not self.enabled:
            return loss_sum, rows
        totals = all_reduce_sum(torch.stack([loss_sum.double(), torch.tensor(
            float(rows), dtype=torch.float64, device=self.device)]))
        return totals[0] / self.info.world_size, int(totals[1].item())

    def check_same_data(self, data: EncodedData) -> None:
        """Every rank read the same data (see `check_same_data`). The encoder's fingerprint costs a pass over
        the vocabularies: only computed where ranks compare."""
        if self.enabled:
            check_same_data(self.info, data_summary(data), self.device)


LOCAL = Session()


def data_summary(data: EncodedData) -> dict[str, Any]:
    """What must agree across ranks: the rows of each split and a fingerprint of the fitted encoder."""
    encoder = json.dumps(data.encoder.to_dict(), sort_keys=True, default=str).encode()
    splits = [("train", data.train), *data.evaluation_splits().items()]
    return {**{f"{split} rows": len(table) for split, table in splits},
            "encoder": hashlib.sha256(encoder).hexdigest()[:16]}


@contextmanager
def session(cfg: TrainConfig) -> Iterator[Session]:
    """One process's part in a training job, entered once around it. Under torchrun it joins the process
    group (once per process), a collective that fails because a peer died or went silent becomes one clear
    error, and the ranks leave together (a rank leaving early can abort its peers' gloo threads). Without
    torchrun: this process alone, on the configured device."""
    device = resolve_device(cfg.device, env_info())
    info = setup(cfg.dist_timeout, device)
    with peer_failures(info):
        yield Session(info, device)
        barrier(info)


def launch(nproc: int, args: list[str]) -> None:
    """`msrec train --nproc N ...`: torchrun on this machine (N workers, each running `msrec ARGS`)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise MsrecError(f"--nproc must be >= 1, got {nproc}")
    # Each worker's share of the cores for torch's threads (torchrun would otherwise set 1 and say so).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    launcher = get_args_parser().parse_args(["--standalone", "--nproc_per_node", str(nproc), "-m", "msrec", *args])
    try:
        run(launcher)
    except ChildFailedError as err:
        failures = sorted(err.failures.items(), key=lambda kv: kv[1].timestamp)
        which = f"rank {failures[0][0]} (exit code {failures[0][1].exitcode})" if failures else "a worker"
        raise MsrecError(f"distributed training failed: {which} stopped first; its error is printed above") from None
