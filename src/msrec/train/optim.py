"""The optimizer of a training run: `train.optimizer` (Adam / AdamW) for the dense parameters, a row-sparse
one (`train.embedding_optimizer`) for the embedding tables and lazy Adam for the per-scenario stacked parameters
(`train.scenario_updates`), behind one `torch.optim.Optimizer`.

Row-sparse: every `nn.Embedding` of the model is switched to sparse gradients, so a step's backward yields the
rows its batch looked up (a sparse COO gradient), and the table's optimizer reads and writes the weights and
the state of those rows only: a step's cost follows the batch, not the vocabulary.

- `rowwise_adagrad`: one accumulator per row (the mean of the squared gradient over the row), FBGEMM's
  row-wise Adagrad: the state costs 1/D of the table;
- `adam`: `torch.optim.SparseAdam` (lazy Adam: the moments of the rows used are updated; two values per weight);
- `sgd`: plain SGD on the rows used (no state);
- `dense`: the tables stay in `train.optimizer` with dense gradients, as in msrec 0.1.

Weight decay (and AdamW's decoupled decay) applies to the dense parameters only: a row-sparse table has none.
Under DDP, gloo all-reduces sparse gradients; NCCL cannot, so on GPUs a distributed run trains the tables
densely (`dense`), which `fallback_note` says.

Per-scenario stacked parameters (`[S, ...]`, declared by `msrec.nn.routing.stacked`: `scenario_stacked`) are
switched to row-sparse gradients (`row_sparse_grad`: `ScenarioRouting.gather` then yields the slices of the
scenarios the batch holds) and trained by `RowSparseAdam`, which reads and writes those slices only: a step
costs the scenarios present, not S. `train.scenario_updates: dense` (and a distributed run) keeps them in
`train.optimizer`, every slice updated every step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from msrec.config import TrainConfig
from msrec.errors import MsrecError


class RowwiseAdagrad(Optimizer):
    """Adagrad with one accumulator per row: `acc[r] += mean(g[r]^2)`, `w[r] -= lr * g[r] / (sqrt(acc[r]) +
    eps)`, for the rows of a sparse gradient only (a dense gradient: the rows where it is non-zero)."""

    def __init__(self, params, lr: float, eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "eps": eps})
        # Optimizer.load_state_dict casts all state to a floating parameter's dtype: a bf16 table's float32
        # accumulators (and its generator's byte state) are kept aside and put back as they were saved.
        self.register_load_state_dict_pre_hook(_keep_accumulators)
        self.register_load_state_dict_post_hook(_restore_accumulators)

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group, p, rows, grad, state in _row_gradients(self):
            if not state:
                state["sum"] = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
            acc = state["sum"]
            acc.index_add_(0, rows, grad.float().pow(2).flatten(1).mean(1))
            scale = acc.index_select(0, rows).sqrt_().add_(group["eps"]).reciprocal_().mul_(-group["lr"])
            update = grad.float() * scale.view(-1, *[1] * (grad.dim() - 1))
            if p.dtype == torch.float32:
                p.index_add_(0, rows, update)
            else:  # a bf16 table: the rows updated in fp32, stored rounded stochastically
                p.index_copy_(0, rows, self._rounded(state, p, p.index_select(0, rows).float() + update))
        return loss

    @staticmethod
    def _rounded(state: dict[str, Any], p: Tensor, x: Tensor) -> Tensor:
        """`x` rounded stochastically with the table's own generator (saved in its state): its draws depend on
        the rows updated only, which every DDP rank shares, so replicas stay identical whatever else draws
        random numbers (dropout of batches of another size), and a resumed run draws what it would have."""
        generator = torch.Generator(device=p.device)
        if "rounding" in state:
            generator.set_state(state["rounding"])
        else:
            generator.manual_seed(torch.initial_seed())  # train.seed: the same on every rank
        out = round_stochastically(x, generator)
        state["rounding"] = generator.get_state()
        return out


def _keep_accumulators(optimizer: Optimizer, state_dict: dict[str, Any]) -> None:
    optimizer._saved_state = {k: {n: v[n] for n in ("sum", "rounding") if n in v} for k, v in state_dict["state"].items()}


def _restore_accumulators(optimizer: Optimizer) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, saved in optimizer.__dict__.pop("_saved_state", {}).items():
        optimizer.state[params[int(index)]].update({n: v.to(params[int(index)].device) for n, v in saved.items()})


def round_stochastically(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """float32 -> bfloat16 rounded up or down with the probability of the distance to each (unbiased, FBGEMM's
    scheme for 16-bit tables): random low 16 bits added to the float32 pattern, which is then truncated. To
    nearest, an update smaller than half a bf16 step (1/256 of the value) would be lost every time."""
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    return ((x.contiguous().view(torch.int32) + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def check_table_dtypes(tables: list[nn.Embedding], mode: str) -> None:
    """A bf16 table (`model.table_dtype`) trains with `rowwise_adagrad` only: its state is float32 and its
    updates are rounded stochastically; the other optimizers would round to nearest (or keep bf16 moments)."""
    if mode != "rowwise_adagrad" and any(t.weight.dtype != torch.float32 for t in tables):
        raise MsrecError(f"model.table_dtype bfloat16 needs train.embedding_optimizer rowwise_adagrad, not {mode}")


def _closure_loss(closure) -> Tensor | None:
    """The loss of an optimizer step's optional closure (re-evaluated with gradients on)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _row_gradients(optimizer: Optimizer) -> Iterator[tuple[dict[str, Any], Tensor, Tensor, Tensor, dict[str, Any]]]:
    """(group, parameter, its rows in the gradient, their gradient, its state) of every parameter with a gradient."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                rows, grad = _rows(p.grad)
                yield group, p, rows, grad, optimizer.state[p]


def _rows(grad: Tensor) -> tuple[Tensor, Tensor]:
    """(unique rows, their gradient) of a row-sparse gradient. A gradient whose rows are already distinct and
    ascending (`nn.routing.RowSparseGather`'s: autograd stores it without its coalesced flag) is taken as it is:
    coalescing it again would copy all its values."""
    if grad.is_sparse:
        if not grad.is_coalesced():
            rows = grad._indices()[0]
            if rows.numel() and bool((rows[1:] > rows[:-1]).all()):
                return rows, grad._values()
            grad = grad.coalesce()
        return grad.indices()[0], grad.values()
    rows = grad.flatten(1).ne(0).any(1).nonzero().squeeze(1)
    return rows, grad.index_select(0, rows)


class RowSparseAdam(Optimizer):
    """Lazy Adam (AdamW with `decoupled`) over the first-axis slices (rows) that a gradient holds: a sparse
    gradient's rows, or a dense one's non-zero rows. Only those rows' weights and moments are read and written,
    with torch's fused Adam kernel (one pass over them; Adam's unfused path takes ~5x longer on CPU); the bias
    correction counts the parameter's steps (as `torch.optim.SparseAdam`), and weight decay applies to the rows
    updated. Where every row is present it is Adam."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "decoupled": decoupled})

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group, p, rows, grad, state in _row_gradients(self):
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            every = len(rows) == p.shape[0]  # rows are sorted and unique: all of them, in order
            full = (p, state["exp_avg"], state["exp_avg_sq"])
            weight, exp_avg, exp_avg_sq = full if every else (t.index_select(0, rows) for t in full)
            adam = torch._fused_adamw_ if group["decoupled"] else torch._fused_adam_
            adam([weight], [grad.contiguous()], [exp_avg], [exp_avg_sq], [], [state["step"]], amsgrad=False,
                 lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                 weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)
            if not every:
                for t, rows_t in zip(full, (weight, exp_avg, exp_avg_sq), strict=True):
                    t.index_copy_(0, rows, rows_t)
        return loss


class CombinedOptimizer(Optimizer):
    """Several optimizers over disjoint parameters as one: `param_groups` is theirs (a scheduler sets their
    learning rates), `step` / `zero_grad` run each, `state_dict` is `{name: its state_dict}`."""

    def __init__(self, parts: dict[str, Optimizer]):  # no Optimizer.__init__: the parts hold the parameters
        self.parts = parts
        self.defaults: dict[str, Any] = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for part in self.parts.values() for group in part.param_groups]

    @property
    def state(self) -> dict[Tensor, Any]:
        return {p: s for part in self.parts.values() for p, s in part.state.items()}

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for part in self.parts.values():
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != set(self.parts):
            raise ValueError(f"optimizer state of {sorted(state_dict)}, expected {sorted(self.parts)}")
        for name, part in self.parts.items():
            part.load_state_dict(state_dict[name])

    def __repr__(self) -> str:
        return "CombinedOptimizer(" + ", ".join(f"{k}={type(v).__name__}" for k, v in self.parts.items()) + ")"


# Default learning rate of the tables: train.lr times this. Adagrad's steps shrink as a row's squared gradients
# add up, so it needs a larger rate than Adam (docs/embeddings.md has the measurement).
LR_FACTOR = {"rowwise_adagrad": 10.0}


def table_lr(cfg: TrainConfig) -> float:
    """`train.embedding_optimizer.lr`, or by default `train.lr` (times LR_FACTOR for rowwise_adagrad)."""
    opt = cfg.embedding_optimizer
    return opt.lr if opt.lr is not None else cfg.lr * LR_FACTOR.get(opt.name, 1.0)


def embedding_mode(cfg: TrainConfig, distributed: bool, device: torch.device) -> str:
    """The embedding optimizer that will run: the configured one, or `dense` under DDP on GPUs (NCCL has no
    sparse all-reduce)."""
    name = cfg.embedding_optimizer.name
    return "dense" if name != "dense" and distributed and device.type == "cuda" else name


def fallback_note(cfg: TrainConfig, distributed: bool, device: torch.device) -> str | None:
    """What to tell the user when the configured embedding optimizer cannot run here."""
    if embedding_mode(cfg, distributed, device) == cfg.embedding_optimizer.name:
        return None
    return (f"note: train.embedding_optimizer {cfg.embedding_optimizer.name} needs sparse gradients, which NCCL "
            "cannot all-reduce: the embedding tables train densely with train.optimizer on this distributed GPU run")


def scenario_mode(cfg: TrainConfig, distributed: bool, device: torch.device) -> str:
    """How per-scenario stacked parameters are updated here: `train.scenario_updates`, or `dense` when distributed:
    DDP's reducer expects a sparse gradient only of `nn.Embedding` tables (and a stacked parameter's gradient is
    dense where it is used outside `ScenarioRouting.gather`: partitioned norm, HMoE's every-tower scores)."""
    return "dense" if distributed else cfg.scenario_updates


def build_optimizer(model: nn.Module, cfg: TrainConfig, distributed: bool = False,
                    device: torch.device | None = None) -> Optimizer:
    """The run's optimizer. Row-sparse modes switch every `nn.Embedding` of `model` to sparse gradients (its
    output and weights are unchanged) and give its weight to the table optimizer; `scenario_updates: row_sparse`
    switches the stacked per-scenario parameters to row-sparse gradients and gives them to `RowSparseAdam`;
    everything else, and every table with `dense`, is trained by `train.optimizer`."""
    device = device or torch.device("cpu")
    mode = embedding_mode(cfg, distributed, device)
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    check_table_dtypes(tables, mode)
    for table in tables:
        table.sparse = mode != "dense"
    table_params = {id(t.weight): t.weight for t in tables if mode != "dense"}
    # A parameter that an optimizer inside the backward updates (a table sharded by TorchRec) is not ours.
    ours = [p for p in model.parameters() if id(p) not in table_params and not hasattr(p, "_in_backward_optimizers")]
    row_sparse = scenario_mode(cfg, distributed, device) == "row_sparse"
    stacked = [p for p in ours if getattr(p, "scenario_stacked", False)]
    for p in stacked:
        p.row_sparse_grad = row_sparse
    lazy = {id(p) for p in stacked} if row_sparse else set()
    dense = [p for p in ours if id(p) not in lazy]
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    parts: dict[str, Optimizer] = {"dense": cls(dense, lr=cfg.lr, weight_decay=cfg.weight_decay)} if dense else {}
    if lazy:
        parts["scenarios"] = RowSparseAdam(stacked, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           decoupled=cfg.optimizer == "adamw")
    if table_params:
        lr = table_lr(cfg)
        params = list(table_params.values())
        if mode == "adam":
            parts["embeddings"] = torch.optim.SparseAdam(params, lr=lr)
        elif mode == "sgd":
            parts["embeddings"] = torch.optim.SGD(params, lr=lr)
        else:
            parts["embeddings"] = RowwiseAdagrad(params, lr=lr)
    if list(parts) == ["dense"]:
        return parts["dense"]
    return CombinedOptimizer(parts)
