"""Which other scenarios' parts a scenario borrows when it may borrow only k - 1 of them (the bounded
variants of hmoe and m3oe): the k - 1 largest other scenarios by training rows seen, the best-trained parts,
the ones a small scenario gains most from. One choice for every scenario (the same k largest, less the
scenario itself), so it costs a sort of S counts, not a search per scenario."""

from __future__ import annotations

import torch
from torch import Tensor


def largest_others(rows_seen: Tensor, k: int) -> Tensor:
    """`[S, k - 1]`: for each scenario s, the k - 1 scenarios other than s with the most rows seen (ties: the
    lower id), largest first. `rows_seen [S]`, `1 <= k <= S`."""
    S = rows_seen.shape[0]
    top = torch.argsort(rows_seen, descending=True, stable=True)[:k]  # [k]
    keep = top.unsqueeze(0) != torch.arange(S, device=top.device).unsqueeze(1)  # [S, k]: drop the own scenario
    keep[:, k - 1] &= ~keep.all(1)  # own scenario not among the k largest: drop the k-th instead
    return top.expand(S, k)[keep].view(S, k - 1)
