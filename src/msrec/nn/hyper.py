"""Low-rank layers whose small core is generated from a condition (HAMUR's hyper adapters, APG).

    W(c) = U S(c) V                U [in, K], V [K, out] shared; S(c) [K, K] generated from the condition c
    y    = ((x U) S(c)) V + b      W(c) is never formed: in*K + K*K + K*out per row instead of in*out

`S(c)` is given per row (`[B, K, K]`): a model that generates it once per condition group expands it to its
rows first (a gather of K*K numbers per row), so the layer is the same whole-batch ops for every caller,
with no loop over rows, groups or scenarios.

Over-parameterization (APG): `U = U_l U_r` (`U_l [in, P]`, `U_r [P, K]`) and `V = V_l V_r` (`V_l [K, P]`,
`V_r [P, out]`), P >= K: the same functions (rank <= K), trained through a wider product, which the APG paper
reports trains better; the products are formed once per forward (`left()`, `right()`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from msrec.nn.mlp import MLP, MLPOptions


def _factor(rows: int, cols: int) -> nn.Parameter:
    """A `[rows, cols]` factor with entries of std 1/sqrt(rows): `x @ factor` keeps x's scale."""
    return nn.Parameter(torch.randn(rows, cols) / math.sqrt(rows))


class CoreGenerator(nn.Module):
    """The hyper-network: condition `c [N, cond_dim]` -> `count` cores `[N, count, K, K]` (an MLP, `options`
    are its hidden layers). Its output bias starts at the identity, so every core starts near I and a
    generated layer starts as the shared `U V`; the condition's part is learned from there."""

    def __init__(self, cond_dim: int, rank: int, options: MLPOptions, count: int = 1):
        super().__init__()
        self.rank, self.count = rank, count
        self.net = MLP.of(cond_dim, options, count * rank * rank)
        with torch.no_grad():
            self.net.layers[-1].bias.copy_(torch.eye(rank).flatten().repeat(count))

    def forward(self, c: Tensor) -> Tensor:
        return self.net(c).view(c.shape[0], self.count, self.rank, self.rank)


class LowRankCoreLinear(nn.Module):
    """`y = ((x U) S) V + b` with `S [B, K, K]` one core per row (see the module docstring)."""

    def __init__(self, in_dim: int, out_dim: int, rank: int, overparam: int | None = None, bias: bool = True):
        super().__init__()
        if overparam is not None and overparam < rank:
            raise ValueError(f"over-parameterization width {overparam} is below the rank {rank}")
        self.in_dim, self.out_dim, self.rank = in_dim, out_dim, rank
        if overparam is None:
            self.u, self.v = _factor(in_dim, rank), _factor(rank, out_dim)
        else:
            self.u_left, self.u_right = _factor(in_dim, overparam), _factor(overparam, rank)
            self.v_left, self.v_right = _factor(rank, overparam), _factor(overparam, out_dim)
        self.overparam = overparam
        self.bias = nn.Parameter(torch.zeros(out_dim)) if bias else None

    def left(self) -> Tensor:
        """U `[in, K]`."""
        return self.u if self.overparam is None else self.u_left @ self.u_right

    def right(self) -> Tensor:
        """V `[K, out]`."""
        return self.v if self.overparam is None else self.v_left @ self.v_right

    def weight(self, core: Tensor) -> Tensor:
        """The weights `U S V` `[N, in, out]` of cores `[N, K, K]` (for inspection; forward never forms them)."""
        return self.left() @ core @ self.right()

    def forward(self, x: Tensor, core: Tensor) -> Tensor:
        h = ((x @ self.left()).unsqueeze(2) * core).sum(1)  # [B, K]: each row through its own core (a bmm of
        # [1, K] x [K, K] per row is several times slower on CPU than this product and sum)
        out = h @ self.right()
        return out if self.bias is None else out + self.bias
