"""Run per-scenario modules on their own rows only.

The batch is grouped by scenario once (a stable sort); each scenario's module runs on its contiguous
slice; the outputs are put back in the original row order. Scenarios absent from the batch cost
nothing, and a module never sees (nor gets gradient from) another scenario's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class ScenarioRouting:
    def __init__(self, scenario: Tensor, num_scenarios: int):
        self.order = torch.argsort(scenario, stable=True)
        self.counts: list[int] = torch.bincount(scenario, minlength=num_scenarios).tolist()
        self.num_scenarios = num_scenarios

    def split(self, x: Tensor) -> tuple[Tensor, ...]:
        """Rows of `x` grouped by scenario: element s holds scenario s's rows (possibly none)."""
        return x.index_select(0, self.order).split(self.counts)

    def merge(self, parts: Sequence[Tensor]) -> Tensor:
        """Inverse of `split`: per-scenario outputs back in the batch's row order."""
        grouped = torch.cat(list(parts), 0)
        out = torch.empty_like(grouped)
        out[self.order] = grouped
        return out

    def apply(self, fn: Callable[[int, Tensor], Tensor], x: Tensor) -> Tensor:
        """`fn(s, rows_of_s)` for each scenario present in the batch, merged back in row order."""
        parts = self.split(x)
        present = [s for s, n in enumerate(self.counts) if n > 0]
        outs = {s: fn(s, parts[s]) for s in present}
        template = next(iter(outs.values()))
        return self.merge([outs[s] if s in outs else template.new_zeros(0, *template.shape[1:])
                           for s in range(self.num_scenarios)])
