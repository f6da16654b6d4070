"""torch.compile on CPU: training samples/s of the eager model vs `torch.compile(model, dynamic=True)`.

Same model, optimizer and pre-built shuffled batches (synthetic data) for both; the compiled model's first
epoch (compilation included) is reported apart and left out of its speed. Per repeat, eager and compiled alternate
which runs first; the ratio compiled/eager is the median over repeats of each repeat's paired ratio.

    python benchmarks/compile.py [--rows 200000] [--epochs 2] [--repeats 3] [--models dnn star]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from throughput import bare_train  # this folder's script: the same bare loop as the trainer's reference

from msrec.api import prepare_data
from msrec.config import Config
from msrec.models import build_model


def epoch_speeds(model, batches, epochs: int) -> list[float]:
    """Samples/s of each epoch (a fresh Adam per epoch: its state does not change the step's cost)."""
    return [bare_train(model, batches, lr=1e-3) for _ in range(epochs)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", nargs="*", default=["dnn", "split_merge", "star"])
    args = ap.parse_args()
    cfg = Config.model_validate({"data": {"dataset": "synthetic", "options": {"rows": args.rows}}})
    data = prepare_data(cfg)
    spec = data.encoder.spec()
    batches = list(data.train.batches(args.batch_size, shuffle=True,
                                                generator=torch.Generator().manual_seed(0)))
    print(f"{len(data.train):,} training rows, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, median of {args.repeats}")
    print(f"{'model':<14}{'eager/s':>10}{'compiled/s':>12}{'ratio':>7}{'1st epoch s':>13}")
    for name in args.models:
        eager, compiled, ratios, first_epoch_s = [], [], [], []
        for r in range(args.repeats):
            for kind in ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager"):
                torch.manual_seed(r)
                model = build_model(name, spec, {})
                if kind == "eager":
                    eager.append(statistics.median(epoch_speeds(model, batches, args.epochs)))
                    continue
                torch._dynamo.reset()
                first, *rest = epoch_speeds(torch.compile(model, dynamic=True), batches, args.epochs + 1)
                first_epoch_s.append(len(data.train) / first)  # compilation + one epoch
                compiled.append(statistics.median(rest))
            ratios.append(compiled[-1] / eager[-1])
        print(f"{name:<14}{statistics.median(eager):>10,.0f}{statistics.median(compiled):>12,.0f}"
              f"{statistics.median(ratios):>7.2f}{statistics.median(first_epoch_s):>13.1f}"
              f"   pairs: {' '.join(f'{r:.2f}' for r in ratios)}", flush=True)


if __name__ == "__main__":
    main()
