"""adasparse: Adaptively Sparse Structures for multi-domain CTR (Yang et al., CIKM 2022).

    pi_0   = prune(P_0 [z; e])                      one factor per unit of the input e
    h_0    = pi_0 * e
    pi_l   = prune(P_l [z; h_{l-1}])                one factor per neuron of hidden layer l
    h_l    = dropout(pi_l * act(W_l h_{l-1} + b_l))
    logit  = W_out h_L + b_out                       [B, T]

    prune(v) = f(v) where f(v) >= eps, else 0        (the neuron is pruned for this row)
      binarization: f(v) = sigmoid(alpha * v)        tends to {0, 1} as alpha grows
      scaling:      f(v) = beta * sigmoid(v)
      fusion:       f(v) = beta * sigmoid(alpha * v)

A pruner `P_l` is a small network over the scenario-indicator embeddings `z` and the layer's input: each
scenario (and row) gets its own sparse sub-network of one shared MLP, with no per-scenario weights. Factors
below `eps` are exactly 0, so a pruned neuron neither contributes to the row's output nor receives its
gradient.

The sharpness `alpha` is the model's training state: a buffer that grows by `alpha_step` after every
training forward pass up to `alpha_max`, and that an evaluation forward pass reads but never moves (public
versions add to it on every call, evaluation included, so a model's scores drift with each evaluation). It
is saved with the weights, so a loaded run scores with the alpha it was trained to.

Choices (the paper leaves these open or ties them to its platform):
- Pruner input: `z` (the embeddings of the scenario-indicator fields) and the layer's own input; a pruner
  is the MLP `pruner` (default: one linear layer) with one output per neuron it prunes.
- Factors scale the layer's activations (after the activation, before dropout); the input pruner scales
  every unit of `e` (embedding units and dense values).
- Default mode `fusion`, beta 2, eps 0.05 (a factor under 2.5% of its largest value is cut), alpha from 1
  by 0.01 per step up to 5.
- The paper's flexible sparsity regulariser, added to the loss through the trainer's `aux_loss()` hook:

      R = weight * sum_l sign_l * mean(f_l)       f_l: layer l's factors before the cut, this training batch
      sign_l = +1 if r_l < target - tolerance     r_l: the fraction of layer l's factors cut (0) in the batch
               -1 if r_l > target + tolerance
                0 otherwise

  an L1 pull on the factors whose direction follows the measured sparsity, so each layer's share of cut
  neurons moves into the band around the target and stays there. It acts on the factors before the cut
  (a cut factor has no gradient through the cut, so a layer that is too sparse could not come back) and
  in every mode. Defaults: target 0.2, tolerance 0.05, weight 0.01 (the paper's values are tied to its
  platform; these were measured to keep MovieLens 100K at its AUC, docs/models/adasparse.md);
  `sparsity_weight: 0` turns it off.
- Multi-task: one MLP with T outputs.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.registry import ModelOptions, part, register
from msrec.nn import MLP, FeatureEmbedding, MLPOptions
from msrec.nn.mlp import Dropout
from msrec.schema import FeatureSpec


class AdaSparseOptions(ModelOptions):
    mlp: MLPOptions = part([256, 128], dropout=0.2)
    """The main MLP, one pruner per hidden layer."""
    pruner: MLPOptions = part([])
    """Each pruner (hidden layers before its output; []: one linear layer)."""
    mode: Literal["binarization", "scaling", "fusion"] = "fusion"
    """How a pruner's output becomes weighting factors."""
    beta: float = Field(2.0, gt=0)
    """Largest factor (scaling and fusion)."""
    eps: float = Field(0.05, ge=0)
    """Factors below this are set to 0 (the neuron is pruned)."""
    alpha_start: float = Field(1.0, gt=0)
    """Sharpness alpha at the start of training."""
    alpha_step: float = Field(0.01, ge=0)
    """Growth of alpha per training step (training forward pass); evaluation never moves it."""
    alpha_max: float = Field(5.0, gt=0)
    """Largest alpha."""
    sparsity_target: float = Field(0.2, ge=0, lt=1)
    """Target share of cut factors per layer (the sparsity regulariser's)."""
    sparsity_tolerance: float = Field(0.05, ge=0)
    """Half-width of the band around the target in which the regulariser is silent."""
    sparsity_weight: float = Field(0.01, ge=0)
    """Weight of the sparsity regulariser in the loss (0: off)."""


class Pruner(nn.Module):
    """`prune(MLP([z; h]))`: weighting factors in {0} u [eps, beta] (binarization: [eps, 1]), `out_dim` per row."""

    def __init__(self, in_dim: int, out_dim: int, o: AdaSparseOptions):
        super().__init__()
        self.net = MLP.of(in_dim, o.pruner, out_dim)
        self.mode, self.beta, self.eps = o.mode, o.beta, o.eps

    def forward(self, z: Tensor, h: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        """The factors after the cut, and before it (what the sparsity regulariser pulls on)."""
        v = self.net(torch.cat([z, h], 1))
        if self.mode == "binarization":
            factor = torch.sigmoid(alpha * v)
        else:
            factor = self.beta * torch.sigmoid(v if self.mode == "scaling" else alpha * v)
        return factor * (factor >= self.eps), factor


@register("adasparse", AdaSparseOptions,
          "Scenario-aware pruners scale or cut each neuron of a shared MLP per row; sharpness grows in training only")
class AdaSparse(nn.Module):
    def __init__(self, spec: FeatureSpec, options: AdaSparseOptions):
        super().__init__()
        o = options
        self.alpha_step, self.alpha_max = o.alpha_step, o.alpha_max
        self.sparsity = (o.sparsity_target - o.sparsity_tolerance, o.sparsity_target + o.sparsity_tolerance)
        self.sparsity_weight = o.sparsity_weight
        self._step_factors: list[tuple[Tensor, Tensor]] = []  # the last training forward's, for aux_loss
        self.embedding = FeatureEmbedding(spec, o.embed_dim, o.backbone)
        self.scenario_fields = list(spec.scenario_fields)
        z_dim = len(self.scenario_fields) * o.embed_dim
        dim = self.embedding.flat_dim
        self.input_pruner = Pruner(z_dim + dim, dim, o)
        self.layers = nn.ModuleList()
        self.pruners = nn.ModuleList()
        for width in o.mlp.hidden:
            self.layers.append(MLP(dim, [width], activation=o.mlp.activation, batch_norm=o.mlp.batch_norm))
            self.pruners.append(Pruner(z_dim + dim, width, o))
            dim = width
        self.dropout = Dropout(o.mlp.dropout)
        self.out = nn.Linear(dim, spec.num_tasks)
        self.register_buffer("alpha", torch.tensor(o.alpha_start))

    def factors(self, batch: Batch) -> list[Tensor]:
        """The weighting factors of every pruned layer (input first), `[B, width]` each, at the current alpha."""
        return [cut for cut, _ in self._run(batch, self.alpha.clone())[1]]

    def _run(self, batch: Batch, alpha: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        z = self.embedding.select(batch, self.scenario_fields)
        h = self.embedding.flat(batch)
        pi, raw = self.input_pruner(z, h, alpha)
        h, factors = pi * h, [(pi, raw)]
        for layer, pruner in zip(self.layers, self.pruners, strict=True):
            pi, raw = pruner(z, h, alpha)
            h = self.dropout(pi * layer(h))
            factors.append((pi, raw))
        return self.out(h), factors

    def forward(self, batch: Batch) -> Tensor:
        logits, factors = self._run(batch, self.alpha.clone())  # a copy: the update below must not touch the graph
        if self.training:  # the training state moves in training only, after the step that used it
            self._step_factors = factors if self.sparsity_weight > 0 else []
            with torch.no_grad():
                self.alpha.add_(self.alpha_step).clamp_(max=self.alpha_max)
        return logits

    def aux_loss(self) -> Tensor | None:
        """The sparsity regulariser of the last training forward pass (the trainer adds it to the loss), once:
        the factors are released so that they hold no graph after the step."""
        factors, self._step_factors = self._step_factors, []
        if not factors:
            return None
        low, high = self.sparsity
        total = 0
        for cut, raw in factors:
            ratio = (cut == 0).float().mean().detach()  # a tensor: no host sync in the step
            sign = (ratio < low).float() - (ratio > high).float()
            total = total + sign * raw.mean()
        return self.sparsity_weight * total
