"""adaptdhm: Adaptive Distribution Hierarchical Model (Li et al., 2022, Cainiao / Alibaba).

    u      = normalize(stop_gradient(e))                     the row's routing representation
    r      = softmax(u C^T / tau)                            soft assignment to K centroids (unit rows of C)
    k      = argmax r                                        the row's cluster: it picks the row's tower
    logit  = FCN_k(e),  layer i of tower k: (W_i * W_k,i), b_i + b_k,i                                [B, T]

    training only, `routing_iters` times per batch:
      C_k <- normalize(m * C_k + (1 - m) * normalize(sum_rows r_k u))     then r is computed again

Rows are routed to towers by where their representation falls, not by their scenario id: the model finds
its own groups of rows (the paper's distributions) instead of trusting a predefined split. The centroids
are a buffer moved by a moving average of the batch's soft cluster means (the paper's dynamic routing) in
training only: evaluation reads them and never moves them, so a row's score does not depend on what was
scored before it. Each tower is a star-topology FCN (`nn.star.StarFCN`, as `star`'s with clusters in the
place of scenarios): the shared centre `W, b` learns from every row, cluster k's own `W_k, b_k` (starting
at ones and zeros) from its rows only (applied over the batch's tiles of one cluster each, no loop over
clusters).

Choices (where the paper is open):
- The routing reads the flat input `e` (embeddings and dense values) through a stop-gradient, normalised,
  so routing never pulls the embeddings; similarity is cosine, sharpened by `temperature`.
- Centroids start as random unit vectors (drawn from the model's seed); momentum 0.9, 3 routing iterations
  per training batch; assignment is hard (argmax) in training and evaluation.
- Multi-task: each tower outputs T logits.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.registry import ModelOptions, part, register, without_batch_norm
from msrec.nn import FeatureEmbedding, MLPOptions, ScenarioRouting
from msrec.nn.star import StarFCN
from msrec.schema import FeatureSpec


class AdaptDHMOptions(ModelOptions):
    mlp: Annotated[MLPOptions, without_batch_norm("the towers are star-topology FCNs")] = part(
        [256, 128], dropout=0.2)
    """Each cluster's tower (shared centre times the cluster's own weights)."""
    clusters: int = Field(4, ge=1)
    """Number of clusters K (one tower each)."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """Share of a centroid kept at each update (training only)."""
    routing_iters: int = Field(3, ge=1)
    """Centroid updates per training batch."""
    temperature: float = Field(0.1, gt=0)
    """Softmax temperature of the soft assignment (smaller: sharper)."""


@register("adaptdhm", AdaptDHMOptions,
          "Rows routed to K star-topology towers by learnt centroids of their representation (moved in training only)")
class AdaptDHM(nn.Module):
    def __init__(self, spec: FeatureSpec, options: AdaptDHMOptions):
        super().__init__()
        o = options
        self.num_clusters, self.momentum, self.iters, self.temperature = (
            o.clusters, o.momentum, o.routing_iters, o.temperature)
        self.embedding = FeatureEmbedding(spec, o.embed_dim, o.backbone)
        dim = self.embedding.flat_dim
        self.register_buffer("centroids", F.normalize(torch.randn(o.clusters, dim), dim=1))
        self.towers = StarFCN(dim, o.mlp, spec.num_tasks, o.clusters)

    def assignment(self, u: Tensor) -> Tensor:
        """`[B, K]` soft assignment of normalised rows `u` to the centroids."""
        return torch.softmax(u @ self.centroids.T / self.temperature, -1)

    @torch.no_grad()
    def update_centroids(self, u: Tensor) -> None:
        """Moves each centroid toward the direction of its soft share of the batch (training only)."""
        for _ in range(self.iters):
            means = F.normalize(self.assignment(u).T @ u, dim=1)
            self.centroids.copy_(F.normalize(self.momentum * self.centroids + (1 - self.momentum) * means, dim=1))

    def clusters(self, batch: Batch, e: Tensor | None = None) -> Tensor:
        """`[B]` each row's cluster (its nearest centroid), from the centroids as they are."""
        e = self.embedding.flat(batch) if e is None else e
        return self.assignment(F.normalize(e.detach(), dim=1)).argmax(1)

    def forward(self, batch: Batch) -> Tensor:
        e = self.embedding.flat(batch)
        if self.training:
            self.update_centroids(F.normalize(e.detach(), dim=1))
        return self.towers(e, ScenarioRouting(self.clusters(batch, e), self.num_clusters))
