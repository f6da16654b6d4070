"""The dropout mask on CPU: `torch.nn.functional.dropout` (`bernoulli_`), a `torch.rand` mask (the tiles'
dropout before), and `msrec.nn.mlp.dropout` (16-bit lanes of 64-bit draws), forward and backward on a batch of
hidden units; ms per call, medians, and each one's speed against `F.dropout` in the same run.

    python benchmarks/dropout.py [--rows 4096] [--width 256] [--p 0.2] [--repeats 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from msrec.nn.mlp import dropout


def rand_mask(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    keep = 1.0 - p
    return x * torch.rand_like(x).lt_(keep).div_(keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--p", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.rows, args.width, requires_grad=True)
    ways = {"F.dropout (bernoulli_)": F.dropout, "torch.rand mask": rand_mask, "msrec.nn.mlp.dropout": dropout}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(args.repeats + 3):
        for name, way in ways.items():  # interleaved
            t0 = time.perf_counter()
            way(x, args.p, True).sum().backward()
            if r >= 3:  # warm-up left out
                times[name].append(1000 * (time.perf_counter() - t0))
    base = statistics.median(times["F.dropout (bernoulli_)"])
    print(f"[{args.rows}, {args.width}] p={args.p}, {torch.get_num_threads()} threads, forward + backward, "
          f"median of {args.repeats}")
    print(f"{'mask':<24}{'ms':>8}{'x F.dropout':>13}")
    for name in ways:
        ms = statistics.median(times[name])
        print(f"{name:<24}{ms:>8.2f}{base / ms:>13.2f}")


if __name__ == "__main__":
    main()
