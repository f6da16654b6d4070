"""Where the per-scenario matmuls' cost at many scenarios comes from, and what another way of running them gets.

star's and separate's layers are one grouped matmul over a batch's tiles (nn.routing): per scenario present one
GEMM of its rows by its weights, forward, input gradient and weight gradient. At S = 100 a batch of 4,096 rows
holds ~100 scenarios (shares ~ 1/(k+1)), so ~100 GEMMs of a few dozen rows each per layer and pass, against 3
large ones at S = 3. For star's layers (`in -> out` of its hidden star layers at the defaults), on the routing of
the benchmark's own batches (`scenarios.data_for`), this times the three passes of one layer, summed over the
layers, per batch (median):

- `grouped`: `F.grouped_mm` as the layers run it (PyTorch's CPU kernel: one BLAS GEMM per group, in turn, each
  using every thread);
- `groups in parallel`: the same per-group GEMMs (`torch.mm`) on one thread, divided by the thread count: the
  best a kernel could do that ran the groups side by side on the threads, each GEMM MKL's own;
- `bmm per tile`: MKL's batched GEMM (`torch.bmm`) over the tiles with every tile's weights already gathered
  (their gathering, and summing their gradients per scenario, not counted);
- `bmm by size`: the scenarios present put in size classes (rows rounded up to a power of two, at least 8), one
  MKL batched GEMM per class with the class's weights gathered (the gathering counted; padding the rows into the
  classes not): ~8 calls per pass instead of ~100, at the price of padded rows;
- `dense`: one GEMM of the same (padded) rows by one weight matrix, what S = 1 would cost.

`--fbgemm` adds FBGEMM's `jagged_dense_bmm` (the same grouped product, fbgemm-gpu-cpu's CPU kernel) against
`grouped`, forward only, on one batch per S (it is slow: the script would take minutes with it in every pass).

If `grouped` at S = 100 is well above `dense` and `groups in parallel` is not below it, the gap is the small
GEMMs themselves (per-call work and packing of each scenario's weights), not how they are scheduled.

    python benchmarks/grouped_gemm.py [--rows 600000] [--batch-size 4096] [--scenarios 3 100] [--batches 30]
                                      [--threads 2] [--fbgemm]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from scenarios import data_for  # this folder's script: the same batches as the speed benchmark

from msrec.models import build_model
from msrec.nn import ScenarioRouting
from msrec.nn.star import StarLinear

METHODS = ("grouped", "grouped, 1 thread", "groups in parallel", "bmm per tile", "bmm by size", "dense")


def timed(work, repeats: int = 5) -> float:
    """ms of one call of `work`: the median of `repeats` calls after one unmeasured."""
    work()
    spent = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        work()
        spent.append(1000 * (time.perf_counter() - t0))
    return statistics.median(spent)


def layer_times(routing: ScenarioRouting, in_dim: int, out_dim: int, threads: int) -> dict[str, float]:
    """ms of forward + input gradient + weight gradient of one `in -> out` layer over the batch's tiles, per method."""
    tiles = routing.pack(torch.randn(routing.rows, in_dim))
    rows = tiles.reshape(-1, in_dim).contiguous()
    grad = torch.randn(rows.shape[0], out_dim)
    counts = np.asarray(routing.counts)
    per_group = (counts[counts > 0] + routing.tile - 1) // routing.tile * routing.tile
    ends = torch.from_numpy(np.cumsum(per_group)).to(torch.int32)
    weights = torch.randn(len(per_group), out_dim, in_dim)
    tile_weights = weights.index_select(0, torch.searchsorted(routing.present().tile_scenario, routing.tile_scenario))
    tile_rows, tile_grad = rows.view(routing.num_tiles, -1, in_dim), grad.view(routing.num_tiles, -1, out_dim)
    dense = weights[0].contiguous()
    row_groups, grad_groups = rows.split(per_group.tolist()), grad.split(per_group.tolist())

    size_class = np.maximum(8, 2 ** np.ceil(np.log2(counts[counts > 0])).astype(int))
    classes = [(torch.from_numpy(np.flatnonzero(size_class == size)), torch.randn((size_class == size).sum(), size, in_dim),
                torch.randn((size_class == size).sum(), size, out_dim)) for size in np.unique(size_class)]

    def by_size():
        for index, x, g in classes:
            w = weights.index_select(0, index)
            torch.bmm(x, w.transpose(1, 2)), torch.bmm(g, w), torch.bmm(g.transpose(1, 2), x)

    def per_group_mm():
        for x, g, w in zip(row_groups, grad_groups, weights, strict=True):
            torch.mm(x, w.t()), torch.mm(g, w), torch.mm(g.t(), x)

    out = {"grouped": timed(lambda: (F.grouped_mm(rows, weights.transpose(1, 2), offs=ends),
                                     F.grouped_mm(grad, weights, offs=ends),
                                     F.grouped_mm(grad.t(), rows, offs=ends))),
           "bmm per tile": timed(lambda: (torch.bmm(tile_weights, tile_rows.transpose(1, 2)),
                                          torch.bmm(tile_grad, tile_weights),
                                          torch.bmm(tile_grad.transpose(1, 2), tile_rows))),
           "bmm by size": timed(by_size),
           "dense": timed(lambda: (rows @ dense.t(), grad @ dense, grad.t() @ rows))}
    torch.set_num_threads(1)
    out["groups in parallel"] = timed(per_group_mm) / threads
    out["grouped, 1 thread"] = timed(lambda: (F.grouped_mm(rows, weights.transpose(1, 2), offs=ends),
                                             F.grouped_mm(grad, weights, offs=ends),
                                             F.grouped_mm(grad.t(), rows, offs=ends)))
    torch.set_num_threads(threads)
    return out


def fbgemm_forward(routing: ScenarioRouting, in_dim: int, out_dim: int) -> tuple[float, float]:
    """ms of the forward of one layer over the batch's tiles: FBGEMM's `jagged_dense_bmm`, and `grouped`."""
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)

    counts = np.asarray(routing.counts)
    per_group = (counts[counts > 0] + routing.tile - 1) // routing.tile * routing.tile
    rows = torch.randn(int(per_group.sum()), in_dim)
    weights = torch.randn(len(per_group), out_dim, in_dim)
    weights_in_out = weights.transpose(1, 2).contiguous()
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(per_group)]))
    ends = offsets[1:].to(torch.int32)
    jagged = torch.ops.fbgemm.jagged_dense_bmm(rows, offsets, weights_in_out, int(per_group.max()))[0]
    grouped = F.grouped_mm(rows, weights.transpose(1, 2), offs=ends)
    torch.testing.assert_close(jagged, grouped)  # the same product
    return (timed(lambda: torch.ops.fbgemm.jagged_dense_bmm(rows, offsets, weights_in_out, int(per_group.max()))),
            timed(lambda: F.grouped_mm(rows, weights.transpose(1, 2), offs=ends)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=600_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--scenarios", type=int, nargs="+", default=[3, 100])
    ap.add_argument("--batches", type=int, default=30, help="batches timed per S (after 3 for warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fbgemm", action="store_true", help="also FBGEMM's jagged_dense_bmm, forward, one batch per S")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.rows:,} synthetic rows, batch {args.batch_size}, {args.threads} threads; per batch, star's "
          "grouped-matmul layers' forward + input gradient + weight gradient, ms (median over batches)")
    print(f"{'S':>6}{'groups':>8}{'tiles':>7}" + "".join(f"{m:>20}" for m in METHODS) + f"{'grouped / dense':>17}")
    for S in args.scenarios:
        _, spec, batches = data_for(args.rows, S, args.batch_size)
        torch.manual_seed(0)
        shapes = [(layer.weight.shape[1], layer.weight.shape[0]) for layer in build_model("star", spec, {}).modules()
                  if isinstance(layer, StarLinear) and layer.weight.shape[0] % 4 == 0]
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        groups, tiles = [], []
        for i, batch in enumerate(batches[:args.batches + 3]):
            routing = ScenarioRouting.of(batch, S)
            spent = [layer_times(routing, a, b, args.threads) for a, b in shapes]
            if i >= 3:
                for m in METHODS:
                    times[m].append(sum(s[m] for s in spent))
                groups.append(routing.present().num_tiles)
                tiles.append(routing.num_tiles)
        med = {m: statistics.median(v) for m, v in times.items()}
        print(f"{S:>6}{statistics.median(groups):>8.0f}{statistics.median(tiles):>7.0f}"
              + "".join(f"{med[m]:>20.2f}" for m in METHODS) + f"{med['grouped'] / med['dense']:>17.2f}")
        if args.fbgemm:
            forward = [fbgemm_forward(ScenarioRouting.of(batches[0], S), a, b) for a, b in shapes]
            print(f"{'':>6}fbgemm jagged_dense_bmm forward {sum(f[0] for f in forward):.2f} ms, grouped forward "
                  f"{sum(f[1] for f in forward):.2f} ms (one batch)")


if __name__ == "__main__":
    main()
