"""Growing a trained model by scenarios it has never seen (`msrec extend`, docs/scenarios.md).

The protocol: a part that owns per-scenario tensors stacked `[S, ...]` defines `grow_scenarios(source)`,
`source [K]` the old scenario each of K new scenarios starts from, and names its stacked tensors to
`grow_rows` explicitly (never guessed from shapes: a width that happens to equal S is not a scenario axis).
New rows are copies of the source rows and are appended, so old scenario ids and rows are unchanged. A part
with embedding tables defines `grow_vocab(sizes, source)` the same way (`grow_table`). A model whose state
does not match a freshly built model of the grown spec afterwards has a per-scenario part that cannot grow
(msrec.extend names it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def grow_rows(module: nn.Module, source: Tensor, *names: str) -> None:
    """Appends `t[source]` to each named parameter / buffer `t` of `module` (`"weight.0"`: a list's item)."""
    for name in names:
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        old = getattr(owner, leaf)
        grown = torch.cat([old, old.index_select(0, source.to(old.device))])
        if isinstance(old, nn.Parameter):
            param = nn.Parameter(grown, requires_grad=old.requires_grad)
            param.__dict__.update(old.__dict__)  # its marks (nn.routing.stacked)
            setattr(owner, leaf, param)
        else:
            owner.register_buffer(leaf, grown, persistent=leaf not in owner._non_persistent_buffers_set)


@torch.no_grad()
def grow_table(weight: Tensor, sizes: list[int], new_sizes: list[int], source: list[Tensor]) -> Tensor:
    """A table of fields laid end to end, each field's block grown from `sizes[f]` to `new_sizes[f]` rows,
    the new rows copies of the field's rows `source[f]` (field-local ids): every old row keeps its field-local
    id, the later fields' blocks move down."""
    blocks, start = [], 0
    for size, new_size, rows in zip(sizes, new_sizes, source, strict=True):
        block = weight[start:start + size]
        blocks += [block, block.index_select(0, rows.to(weight.device))[: new_size - size]]
        start += size
    return torch.cat([*blocks, weight[start:]])


def field_sizes(offsets: Tensor, rows: int) -> list[int]:
    """Each field's rows in a table of `rows` rows whose fields start at `offsets`."""
    ends = [*offsets[1:].tolist(), rows]
    return [end - start for start, end in zip(offsets.tolist(), ends, strict=True)]
