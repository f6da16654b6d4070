"""`msrec extend` on a scenario held back from training, against the old model scoring it as unknown and a
model trained from scratch on every row (docs/scenarios.md, "Onboarding a new scenario").

    python benchmarks/extend.py synthetic --out runs/extend-synthetic [--reuse] [--set train.batch_size=128 ...]
    MSREC_DATA=/work/data python benchmarks/extend.py movielens --out runs/extend-ml100k
    python benchmarks/extend.py models --out runs/extend-models    # which models extend (a fresh --out)

synthetic: 20,000 rows of the synthetic preset, its smallest scenario held back. movielens: MovieLens 100K with
the user's occupation as the scenario, one mid-sized occupation held back. Both: star, trained on the other
scenarios' rows, then extended by the held-back rows (their own seeded 80/10/10 split); the comparison is on
the held-back scenario's test rows, with the paired bootstrap intervals of msrec.report.stats.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from msrec.api import train
from msrec.extend import extend


def tables(name: str):
    if name == "synthetic":
        from msrec.data.datasets import synthetic

        table = synthetic.generate(rows=20000, seed=7)
        schema = {"sparse": ["user_id", "item_id", "user_group", "item_category"],
                  "dense": ["user_activity", "item_price"], "scenario": "scenario", "labels": ["click"],
                  "user": "user_id", "scenario_features": ["scenario"]}
    else:
        from msrec.data.datasets.movielens import DEFAULTS, default_dir, load_100k

        table = load_100k(default_dir("movielens-100k"), "occupation", (27, 128))
        schema = {**DEFAULTS, "scenario_features": ["scenario"]}
    counts = pc.value_counts(table["scenario"]).to_pylist()
    counts.sort(key=lambda c: c["counts"])
    held = counts[0 if name == "synthetic" else len(counts) // 2]["values"]
    mask = pc.equal(table["scenario"], held)
    return table.filter(pc.invert(mask)), table.filter(mask), schema, held


def every_model(out: Path) -> None:
    """Which models extend: each trained one epoch on 1,800 synthetic rows, extended by the held-back one."""
    from msrec.api import predict
    from msrec.data.datasets import synthetic
    from msrec.errors import MsrecError
    from msrec.models.registry import list_models

    table = synthetic.generate(rows=2000, users=200, items=100, seed=7)
    held = pc.equal(table["scenario"], "s2")
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.filter(pc.invert(held)), out / "old.parquet")
    pq.write_table(table.filter(held), out / "new.parquet")
    schema = {"sparse": ["user_id", "item_id", "user_group", "item_category"], "dense": ["user_activity", "item_price"],
              "scenario": "scenario", "labels": ["click"], "scenario_features": ["scenario"]}
    for entry in list_models():
        name = entry.name
        train({"data": {"train": str(out / "old.parquet"), **schema}, "model": {"name": name, "embed_dim": 4},
               "train": {"epochs": 1, "batch_size": 512, "progress": False}}, out=out / name, overwrite=True)
        try:
            extend(out / name, out / "new.parquet", out / f"{name}-2", ["extend.scratch=false", "extend.replicates=50"])
        except MsrecError as err:
            print(f"{name}: {err}", flush=True)
            continue
        same = predict(out / name, out / "old.parquet", keep_columns=False).equals(
            predict(out / f"{name}-2", out / "old.parquet", keep_columns=False))
        print(f"{name}: extended, old scenarios' scores {'identical' if same else 'CHANGED'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", choices=["synthetic", "movielens", "models"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="for the extension, e.g. train.batch_size=128 or extend.all=true")
    parser.add_argument("--reuse", action="store_true", help="extend the run already in --out (no training)")
    args = parser.parse_args()
    if args.data == "models":
        every_model(args.out)
        return
    old, new, schema, held = tables(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    pq.write_table(old, args.out / "old.parquet")
    pq.write_table(new, args.out / "new.parquet")
    config = {"data": {"train": str(args.out / "old.parquet"), **schema},
              "model": {"name": "star", "embed_dim": 16, "mlp": {"hidden": [64, 32], "dropout": 0.2}},
              "train": {"epochs": args.epochs, "batch_size": 1024, "patience": 2, "progress": False, "seed": 1}}
    if not args.reuse:
        train(config, out=args.out / "run", overwrite=True)
    run2 = args.out / f"run2-{len(list(args.out.glob('run2*')))}"
    metrics = extend(args.out / "run", args.out / "new.parquet", run2, args.overrides)
    print(json.dumps({"held_back": held, "old_rows": old.num_rows, "new_rows": new.num_rows,
                      "source": metrics["extend"]["source"], "comparison": metrics["extend"]["comparison"]}, indent=1))


if __name__ == "__main__":
    main()
