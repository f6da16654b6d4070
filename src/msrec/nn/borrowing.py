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
    ids = torch.arange(S, device=rows_seen.device)
    key = rows_seen.long() * S + (S - 1 - ids)  # unique: more rows first, then the lower id (no stable sort: ONNX)
    top = torch.topk(key, k).indices  # [k]: the k largest scenarios, largest first
    own = top.unsqueeze(0) == ids.unsqueeze(1)  # [S, k]
    drop = torch.where(own.any(1), own.long().argmax(1), k - 1)  # each scenario drops itself, else the k-th
    slot = torch.arange(k - 1, device=top.device).unsqueeze(0)
    return top[slot + (slot >= drop.unsqueeze(1)).long()]  # [S, k - 1]: top without the dropped entry
