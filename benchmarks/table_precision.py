"""Would a bf16 / fp16 embedding table keep quality? (issue 12, item 5: offer one only if it does.)

    MSREC_DATA=/work/data python benchmarks/table_precision.py          # dnn and star, MovieLens 100K, 3 seeds
    python benchmarks/table_precision.py --dataset movielens-1m --path ../shared/data/movielens-1m-sample

A table stored in 16 bits is read into fp32 for the step and written back rounded: this script trains with the
default fp32 table and, after every optimizer step, rounds the embedding tables to the 16-bit format and back
(the storage round trip, exactly; compute stays fp32), either to nearest or stochastically (FBGEMM's option
for fp16 tables: unbiased, so that updates smaller than half a unit in the last place survive on average).
Printed: test macro AUC per variant, mean and std over the seeds, and the difference from fp32 paired by seed.
The memory a 16-bit table would save is exact arithmetic: half the table's bytes (row-wise Adagrad's state is
one fp32 per row either way).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
from collections.abc import Callable

import torch
from torch import Tensor

import msrec

optim = importlib.import_module("msrec.train.optim")

VARIANTS = ["fp32", "bf16-nearest", "bf16-stochastic", "fp16-nearest", "fp16-stochastic"]


def stochastic_round(x: Tensor, dtype: torch.dtype, generator: torch.Generator) -> Tensor:
    """x rounded to `dtype` up or down with the probability of its distance to either (unbiased)."""
    low = x.to(dtype).float()  # nearest; step towards x to find the other neighbour
    towards = torch.where(x > low, torch.full_like(x, float("inf")), torch.full_like(x, -float("inf")))
    high = torch.nextafter(low.to(dtype), towards.to(dtype)).float()
    gap = (high - low).abs()
    p_high = torch.where(gap > 0, (x - low).abs() / gap.clamp(min=torch.finfo(torch.float32).tiny), 0.0)
    return torch.where(torch.rand(x.shape, generator=generator) < p_high, high, low)


def rounding(variant: str, seed: int) -> Callable[[Tensor], Tensor] | None:
    if variant == "fp32":
        return None
    kind, mode = variant.split("-")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[kind]
    generator = torch.Generator().manual_seed(seed)
    if mode == "nearest":
        return lambda x: x.to(dtype).float()
    return lambda x: stochastic_round(x, dtype, generator)


def patch_optimizer(round_table: Callable[[Tensor], Tensor] | None) -> None:
    """`build_optimizer` whose step rounds every embedding table afterwards (the 16-bit storage round trip)."""
    original = optim.__dict__.setdefault("_original_build", optim.build_optimizer)
    if round_table is None:
        optim.build_optimizer = original
        return

    def build(model, cfg, *args, **kwargs):
        opt = original(model, cfg, *args, **kwargs)
        tables = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]

        def round_tables(*_):
            with torch.no_grad():
                for w in tables:
                    w.copy_(round_table(w))

        for part in getattr(opt, "parts", {"all": opt}).values():  # the row-sparse default: a CombinedOptimizer
            part.register_step_post_hook(round_tables)
        return opt

    optim.build_optimizer = build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="movielens-100k")
    parser.add_argument("--path", default=None)
    parser.add_argument("--models", nargs="+", default=["dnn", "star"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[2022, 2023, 2024])
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    args = parser.parse_args()
    trainer_module = importlib.import_module("msrec.train.trainer")  # (msrec.train is also a function)

    data = {"dataset": args.dataset, "split_seed": 2022, **({"path": args.path} if args.path else {})}
    train = {"epochs": 15, "batch_size": 2048, "lr": 0.001, "weight_decay": 1e-5, "patience": 3, "threads": 1,
             "progress": False}
    results: dict[tuple[str, str], list[float]] = {}
    for model in args.models:
        for seed in args.seeds:
            for variant in args.variants:
                patch_optimizer(rounding(variant, seed))
                trainer_module.build_optimizer = optim.build_optimizer  # the trainer's own reference
                cfg = {"data": data, "model": {"name": model}, "train": {**train, "seed": seed}}
                auc = msrec.train(cfg, save=False, console=None).metrics["test"]["macro_auc"]
                results.setdefault((model, variant), []).append(auc)
                print(f"{model:6} seed {seed}  {variant:16} test macro AUC {auc:.4f}", flush=True)
    print("\n| model | table | test macro AUC | vs fp32 (paired by seed) |\n|---|---|---:|---:|")
    for (model, variant), aucs in results.items():
        base = results[(model, "fp32")]
        diffs = [a - b for a, b in zip(aucs, base, strict=True)]
        spread = f" ± {statistics.stdev(aucs):.4f}" if len(aucs) > 1 else ""
        print(f"| {model} | {variant} | {statistics.mean(aucs):.4f}{spread} | {statistics.mean(diffs):+.4f} |")


if __name__ == "__main__":
    main()
