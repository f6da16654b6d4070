"""Run per-scenario modules on their own rows only.

The batch is grouped by scenario once (a stable sort); each scenario's module runs on its contiguous
slice; the outputs are put back in the original row order. Scenarios absent from the batch cost
nothing, and a module never sees (nor gets gradient from) another scenario's rows.

When the model is traced for export (TorchScript, ONNX), the row counts per scenario would be baked
into the graph as constants. There, each scenario's rows are found with `nonzero` instead (a dynamic
op), every scenario's module runs on its own rows (an empty slice for a scenario absent from the
batch), and the outputs are put back with `index_copy`: the same results, a graph valid for any batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def exporting() -> bool:
    """True while a model is being traced for TorchScript or ONNX export (data-dependent Python values,
    such as row counts, must not steer the computation then)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


class ScenarioRouting:
    """`counts`: rows per scenario when the caller knows them on the host (`Batch.scenario_counts`);
    otherwise they are counted here, one copy from the device."""

    def __init__(self, scenario: Tensor, num_scenarios: int, counts: list[int] | None = None):
        self.num_scenarios = num_scenarios
        self.traced = exporting()
        if self.traced:
            self.rows = [(scenario == s).nonzero().squeeze(1) for s in range(num_scenarios)]
            self.order = torch.cat(self.rows)
        else:
            self.order = torch.argsort(scenario, stable=True)
            if counts is None:
                counts = torch.bincount(scenario, minlength=num_scenarios).tolist()
            self.counts: list[int] = [*counts, *[0] * (num_scenarios - len(counts))]

    @classmethod
    def of(cls, batch, num_scenarios: int) -> ScenarioRouting:
        """The routing of a `Batch` by its scenario column."""
        return cls(batch.scenario, num_scenarios, batch.scenario_counts)

    def split(self, x: Tensor) -> tuple[Tensor, ...]:
        """Rows of `x` grouped by scenario: element s holds scenario s's rows (possibly none)."""
        if self.traced:
            return tuple(x.index_select(0, rows) for rows in self.rows)
        return x.index_select(0, self.order).split(self.counts)

    def merge(self, parts: Sequence[Tensor]) -> Tensor:
        """Inverse of `split`: per-scenario outputs back in the batch's row order."""
        grouped = torch.cat(list(parts), 0)
        if self.traced:
            return torch.zeros_like(grouped).index_copy(0, self.order, grouped)
        out = torch.empty_like(grouped)
        out[self.order] = grouped
        return out

    def apply(self, fn: Callable[[int, Tensor], Tensor], x: Tensor) -> Tensor:
        """`fn(s, rows_of_s)` for each scenario present in the batch, merged back in row order."""
        parts = self.split(x)
        if self.traced:
            return self.merge([fn(s, rows) for s, rows in enumerate(parts)])
        present = [s for s, n in enumerate(self.counts) if n > 0]
        outs = {s: fn(s, parts[s]) for s in present}
        template = next(iter(outs.values()))
        return self.merge([outs[s] if s in outs else template.new_zeros(0, *template.shape[1:])
                           for s in range(self.num_scenarios)])
