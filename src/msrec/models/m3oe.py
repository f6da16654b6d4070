"""m3oe: Multi-Domain Multi-Task Mixture-of-Experts (Zhang et al., SIGIR 2024): shared, scenario and task
experts, fused in two levels with learned weights, a tower per (scenario, task).

    X = [shared_1(e); ...; shared_E(e)]      D = [scen_1(e); ...; scen_S(e)]      Q = [task_1(e); ...; task_T(e)]
    g_{s,t}   = softmax(W_{s,t} e + c_{s,t})                       gate of (scenario s, task t) over X
    level 1:  d_s = a_s D_s + (1 - a_s) / (S - 1) sum_{j != s} D_j       a_s = sigmoid(alpha_s)
              q_t = b_t Q_t + (1 - b_t) / (T - 1) sum_{j != t} Q_j       b_t = sigmoid(beta_t)
    level 2:  f_{s,t} = g_{s,t} X + sigmoid(u_{s,t}) d_s + sigmoid(v_{s,t}) q_t
    logit_t   = tower_{s,t}(f_{s,t})                                 for a row of scenario s, task t

The shared experts hold what every scenario and task has in common, a scenario's expert its own preferences,
a task's expert its own objective; the balance `a_s` (`b_t`) says how much of its own expert a scenario (task)
takes and how much it borrows from the others, the fusion weights `u`, `v` how much of each view each
(scenario, task) takes beside the shared mixture. A row of scenario s sees another scenario j's expert only
through `(1 - a_s) / (S - 1)`: with `a_s` at 1 it is the row's own expert alone.

Whole batch: each expert bank is one stacked MLP over every row (nn.stacked; the scenario and task experts
are needed on every row, by the level-1 balance); the gates and towers of (s, t) are stacked per scenario and
run on their scenario's rows only (nn.towers.ScenarioMLP over nn.routing's tiles; a tower per (s, t) routes
each (row, task) pair); the balance and fusion weights are gathered by the row's scenario. No Python loop over
scenarios, tasks or experts.

Cost. The level-1 balance puts every scenario's expert on every row: E + S + T expert passes per row, a step's
cost grows with S (at S = 100 a row runs 100 scenario experts). `top_k: k` bounds it: a row of scenario s
balances its own expert with those of k - 1 others N(s) only,

    d_s = a_s D_s + (1 - a_s) / (k - 1) sum_{j in N(s)} D_j

N(s) the k - 1 largest other scenarios by training rows seen (nn.borrowing, hmoe's choice: the best-trained
experts, the ones a small scenario gains from borrowing; `rows_seen`, a buffer saved with the model, counts
them). The scenario experts are then stacked per scenario (nn.towers.ScenarioMLP, row-sparse updates) and
run in one pass over nn.routing's tiles of k copies of each row, routed to its own expert and to N(s): k
expert passes per row whatever S. The borrowed experts keep the paper's gradient (expert j learns from the
rows that borrow it, as every D_j does in the full model: at k >= S the bounded model is the full model's
math, k = S); their cost is bounded by k, so nothing forbids it (a stop-gradient, hmoe's, would save only
their backward). k = 1: the own expert alone. With `mlp.batch_norm` each scenario expert normalises over
the rows that run it (its own and its borrowers'). `msrec extend` grows neither variant (the (s, t) towers
and the balance and fusion weights have no grow_scenarios; the run is refused, naming the part).

Choices (the paper / its code leaves them open):
- The experts read the model input `e` (the authors' code puts a STAR layer and an MLP before them; here
  `model.backbone` is the place for an input stage).
- The balance is learned per scenario (`a_s`) and per task (`b_t`), the level-2 weights per (scenario, task);
  the paper learns one of each with AutoML (a bi-level DARTS-style search, its own learning rate). Here they
  train with the rest by the one optimizer; all start at sigmoid(1) = 0.73, the authors' default.
- One scenario (task) only: its own expert alone (nothing to balance).
- Gates read `e` without a stop-gradient (the code detaches it); experts are MLPs (`mlp`, their last width is
  the expert size); the towers are `tower` MLPs with one output.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import AfterValidator, Field
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.registry import ModelOptions, part, register, with_layers
from msrec.nn import FeatureEmbedding, MLPOptions
from msrec.nn.borrowing import largest_others
from msrec.nn.routing import ScenarioRouting
from msrec.nn.stacked import StackedMLP
from msrec.nn.towers import ScenarioMLP
from msrec.schema import FeatureSpec

BALANCE_INIT = 1.0  # every balance and fusion logit starts here: sigmoid(1) = 0.73, the authors' default


class M3oEOptions(ModelOptions):
    mlp: Annotated[MLPOptions, AfterValidator(with_layers)] = part([128, 64], dropout=0.2)
    """Each expert, shared, scenario or task (its last width is the expert size d)."""
    experts: int = Field(4, ge=1)
    """Number of shared experts E."""
    tower: MLPOptions = part([64], dropout=0.1)
    """The tower of each (scenario, task), on the scenario's rows."""
    top_k: int | None = Field(None, ge=1)
    """Bounded variant: a row balances its own scenario expert with the k - 1 largest other scenarios' (None: all S)."""


def balance(own: Tensor, bank: Tensor, weight: Tensor) -> Tensor:
    """Level-1 fusion: `weight * own + (1 - weight) / (N - 1) * (sum of the other N - 1 members of bank)`.
    `bank [B, N, d]`, `own [B, ..., d]` a member of it, `weight` broadcastable to `own[..., :1]`."""
    n = bank.shape[1]
    if n == 1:
        return own
    others = bank.sum(1).unflatten(1, (*([1] * (own.dim() - 2)), -1)) - own  # no batch size baked in (export)
    return weight * own + (1 - weight) / (n - 1) * others


@register("m3oe", M3oEOptions,
          "Shared, per-scenario and per-task experts fused in two levels with learned weights; multi-task (M3oE)")
class M3oE(nn.Module):
    def __init__(self, spec: FeatureSpec, options: M3oEOptions):
        super().__init__()
        o = options
        s, t = spec.num_scenarios, spec.num_tasks
        self.num_scenarios, self.num_tasks = s, t
        self.embedding = FeatureEmbedding(spec, o.embed_dim, o.backbone)
        dim = self.embedding.flat_dim
        self.shared = StackedMLP(dim, o.mlp, o.experts)
        self.top_k = min(o.top_k, s) if o.top_k is not None else None
        if self.top_k is None:  # every scenario's expert on every row
            self.scenario_experts = StackedMLP(dim, o.mlp, s)
        else:  # each row's own and borrowed experts, over tiles; training rows seen per scenario choose N(s)
            self.scenario_experts = ScenarioMLP(dim, o.mlp, None, s)
            self.register_buffer("rows_seen", torch.zeros(s))
        self.task_experts = StackedMLP(dim, o.mlp, t)
        self.num_experts = o.experts
        self.gates = ScenarioMLP(dim, MLPOptions(hidden=[], dropout=0.0), t * o.experts, s)  # T gates per scenario
        self.towers = ScenarioMLP(o.mlp.hidden[-1], o.tower, 1, s * t)  # tower s * T + t: (scenario s, task t)
        self.scenario_balance = nn.Parameter(torch.full((s,), BALANCE_INIT))
        self.task_balance = nn.Parameter(torch.full((t,), BALANCE_INIT))
        self.scenario_fusion = nn.Parameter(torch.full((s, t), BALANCE_INIT))
        self.task_fusion = nn.Parameter(torch.full((s, t), BALANCE_INIT))
        self.register_buffer("task_ids", torch.arange(t), persistent=False)

    def borrowed(self) -> Tensor:
        """`[S, k - 1]` (`top_k` only): N(s), the scenarios whose experts scenario s borrows."""
        return largest_others(self.rows_seen, self.top_k)

    def scenario_bank(self, e: Tensor, batch: Batch, routing: ScenarioRouting) -> Tensor:
        """The scenario experts each row balances, `[B, n, d]`: every scenario's (n = S, the full model), or
        (`top_k`) the row's own first and then N(s)'s (n = k), in one pass over the tiles of k copies of each
        row, routed to those k experts."""
        if self.top_k is None:
            return self.scenario_experts(e)
        if self.top_k == 1:
            return self.scenario_experts(e, routing).unsqueeze(1)
        others = self.borrowed().index_select(0, batch.scenario)  # [B, k - 1]
        pairs = ScenarioRouting(torch.cat([batch.scenario.unsqueeze(1), others], 1).flatten(), self.num_scenarios)
        return self.scenario_experts(e.repeat_interleave(self.top_k, 0), pairs).unflatten(0, (-1, self.top_k))

    def views(self, batch: Batch) -> dict[str, Tensor]:
        """The parts of every row: expert outputs `shared [B, E, d]`, `scenario [B, S, d]` (`top_k`: `[B, k, d]`,
        the own expert first), `task [B, T, d]`; gate weights `gate [B, T, E]`; level-1 fusions `scenario_view
        [B, d]`, `task_view [B, T, d]`; the towers' inputs `fused [B, T, d]`."""
        e = self.embedding.flat(batch)
        s = batch.scenario
        routing = ScenarioRouting.of(batch, self.num_scenarios)
        x, d, q = self.shared(e), self.scenario_bank(e, batch, routing), self.task_experts(e)
        gate = self.gates(e, routing).view(-1, self.num_tasks, self.num_experts)
        gate = torch.softmax(gate, -1)  # [B, T, E]: the row's scenario's gate of each task
        own = d[:, 0] if self.top_k is not None else d.gather(1, s.view(-1, 1, 1).expand(-1, 1, d.shape[2])).squeeze(1)
        scenario_view = balance(own, d, torch.sigmoid(self.scenario_balance)[s].unsqueeze(1))
        task_view = balance(q, q, torch.sigmoid(self.task_balance).view(1, -1, 1))
        fused = (torch.einsum("bte,bed->btd", gate, x)
                 + torch.sigmoid(self.scenario_fusion)[s].unsqueeze(2) * scenario_view.unsqueeze(1)
                 + torch.sigmoid(self.task_fusion)[s].unsqueeze(2) * task_view)
        return {"shared": x, "scenario": d, "task": q, "gate": gate, "scenario_view": scenario_view,
                "task_view": task_view, "fused": fused}

    def forward(self, batch: Batch) -> Tensor:
        if self.top_k is not None and self.training:
            self.rows_seen += torch.bincount(batch.scenario, minlength=self.num_scenarios).to(self.rows_seen.dtype)
        fused = self.views(batch)["fused"]
        b, t = fused.shape[:2]
        tower = (batch.scenario.unsqueeze(1) * t + self.task_ids).flatten()  # (scenario, task) of each row's task
        return self.towers(fused.flatten(0, 1), ScenarioRouting(tower, self.num_scenarios * t)).view(b, t)
