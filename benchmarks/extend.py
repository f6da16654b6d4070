"""`msrec extend` on a scenario held back from training, against the old model scoring it as unknown and a
model trained from scratch on every row (docs/scenarios.md, "Onboarding a new scenario").

    python benchmarks/extend.py synthetic --out runs/extend-synthetic --seeds 1 2 3 [--label NAME --set ...]
    MSREC_DATA=/work/data python benchmarks/extend.py movielens --out runs/extend-ml100k --seeds 1 2 3
    MSREC_DATA=/work/data python benchmarks/extend.py movielens --held educator --out runs/extend-ml100k-educator
    python benchmarks/extend.py models --out runs/extend-models    # which models extend (a fresh --out)

synthetic: 40,000 rows of the synthetic preset, its smallest scenario (s2, about 4,000 rows) held back.
movielens: MovieLens 100K with the user's occupation as the scenario, healthcare (2,804 rows, a mid-sized
occupation) held back, or the occupation named by --held. Both: star trained on the other scenarios' rows (one run per seed: `train.seed` sets
the split and the initialisation), then extended by the held-back rows (their own seeded 80/10/10 split).

Per seed, the three models score the held-back scenario's test rows (the from-scratch model once per seed,
kept in `scratch-SEED.npz` and reused by later `--label`s). The pooled figures: each model's AUC averaged
over the seeds, and extend minus each baseline averaged over the seeds with the 95% interval of
msrec.report.stats.paired_difference (each replicate draws seeds with replacement and resamples each drawn
seed's test rows, the same rows for both models). Everything is kept in --out: runs already there are
reused, so a `--label` variant (e.g. `--set extend.vocab=indicators`) costs only its extensions.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from msrec.api import evaluate, train
from msrec.data.prepare import load_splits
from msrec.extend import extend, extend_scored
from msrec.report.stats import paired_difference, replicate_metrics, weighted_auc
from msrec.runs import load_run

REPLICATES = 1000
SYNTHETIC_ROWS = 40_000
HELD = {"synthetic": "s2", "movielens": "healthcare"}


def tables(name: str, held: str):
    if name == "synthetic":
        from msrec.data.datasets import synthetic

        table = synthetic.generate(rows=SYNTHETIC_ROWS, seed=7)
        schema = {"sparse": ["user_id", "item_id", "user_group", "item_category"],
                  "dense": ["user_activity", "item_price"], "scenario": "scenario", "labels": ["click"],
                  "user": "user_id", "scenario_features": ["scenario"]}
    else:
        from msrec.data.datasets.movielens import DEFAULTS, default_dir, load_100k

        table = load_100k(default_dir("movielens-100k"), "occupation", (27, 128))
        schema = {**DEFAULTS, "scenario_features": ["scenario"]}
    mask = pc.equal(table["scenario"], held)
    if not pc.any(mask).as_py():
        raise SystemExit(f"--held {held}: no {name} row has that scenario")
    return table.filter(pc.invert(mask)), table.filter(mask), schema


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


def one_seed(args, schema: dict, seed: int) -> dict[str, np.ndarray]:
    """The held-back test rows' labels and every model's scores for one seed (runs reused when present)."""
    run, scratch = args.out / f"run-{seed}", args.out / f"scratch-{seed}.npz"
    config = {"data": {"train": str(args.out / "old.parquet"), **schema},
              "model": {"name": "star", "embed_dim": 16, "mlp": {"hidden": [64, 32], "dropout": 0.2}},
              "train": {"epochs": args.epochs, "batch_size": 1024, "patience": 2, "progress": False, "seed": seed}}
    if not (run / "metrics.json").exists():
        train(config, out=run, overwrite=True)
    run2 = args.out / f"{args.label}-{seed}"
    shutil.rmtree(run2, ignore_errors=True)
    need_scratch = not scratch.exists()
    metrics, rows = extend_scored(run, args.out / "new.parquet", run2,
                                  [f"extend.scratch={need_scratch}", "extend.replicates=10", *args.overrides])
    found = {"labels": rows["labels"][:, 0], **{m: s[:, 0] for m, s in rows["scores"].items()}}
    if need_scratch:
        np.savez(scratch, labels=found["labels"], scratch=found["scratch"])
    kept = np.load(scratch)
    if not np.array_equal(kept["labels"], found["labels"]):
        raise SystemExit(f"{scratch}: other test rows than this extension's; remove it")
    found["scratch"] = kept["scratch"]
    val = metrics["val"]["overall"]  # the extension's validation figures: what variants are chosen on
    found["val"] = np.array([val["auc"], val["logloss"]])
    old_test = args.out / f"old-test-{seed}.parquet"  # the old run's own test rows: what the old scenarios lose
    if not old_test.exists():
        pq.write_table(load_splits(load_run(run).config.data, seed).tables["test"], old_test)
    before, after = evaluate(run, old_test), evaluate(run2, old_test)
    found["old"] = np.array([before["macro_auc"], after["macro_auc"], before["overall"]["auc"], after["overall"]["auc"]])
    np.savez(args.out / f"{args.label}-{seed}.npz", **found)  # this extension's compared rows
    phase2 = metrics["extend"].get("phase2")
    print(f"seed {seed}: source {metrics['extend']['source']}, training {metrics['extend']['training']}, "
          f"epochs {metrics['train']['epochs']} (best {metrics['train']['best_epoch']}), "
          + (f"phase 2 {phase2}, " if phase2 else "") + f"val auc {val['auc']:.4f} logloss {val['logloss']:.4f}, "
          f"old scenarios' macro AUC {found['old'][0]:.4f} -> {found['old'][1]:.4f}, "
          + ", ".join(f"{m} {auc(found['labels'], found[m]):.4f}" for m in ("unknown", "extend", "scratch")),
          flush=True)
    return found


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(weighted_auc(labels, scores, np.ones((1, len(labels)), dtype=np.float32))[0])


def pooled(per_seed: dict[int, dict[str, np.ndarray]]) -> dict:
    """Each model's AUC averaged over the seeds; extend minus each baseline with its paired interval."""
    out = {"seeds": sorted(per_seed), "test_rows": {s: len(r["labels"]) for s, r in per_seed.items()},
           "extend_val_auc": float(np.mean([r["val"][0] for r in per_seed.values()])),
           "extend_val_logloss": float(np.mean([r["val"][1] for r in per_seed.values()])),
           # the old scenarios on the old run's test rows, before and after the extension (mean over seeds)
           "old_macro_auc": [float(np.mean([r["old"][i] for r in per_seed.values()])) for i in (0, 1)],
           "old_auc": [float(np.mean([r["old"][i] for r in per_seed.values()])) for i in (2, 3)],
           "old_macro_auc_change_per_seed": [round(float(r["old"][1] - r["old"][0]), 4) for r in per_seed.values()]}
    reps = {}
    for seed, rows in per_seed.items():
        one = np.zeros(len(rows["labels"]), dtype=np.int64)
        reps[seed] = {m: replicate_metrics(rows["labels"], rows[m], one, ["held"], REPLICATES, seed)["auc"]
                      ["overall"] for m in ("unknown", "extend", "scratch")}
    for m in ("unknown", "extend", "scratch"):
        out[f"{m}_auc"] = float(np.mean([auc(r["labels"], r[m]) for r in per_seed.values()]))
        out[f"{m}_auc_per_seed"] = [round(auc(r["labels"], r[m]), 4) for r in per_seed.values()]
    for base in ("unknown", "scratch"):
        d = paired_difference([auc(r["labels"], r["extend"]) - auc(r["labels"], r[base]) for r in per_seed.values()],
                              [reps[s]["extend"] - reps[s][base] for s in per_seed], True)
        out[f"extend_minus_{base}"] = {"delta": d.delta, "low": d.low, "high": d.high, "p_value": d.p_value,
                                       "wins": d.wins}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", choices=["synthetic", "movielens", "models"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=5, help="of the old run (and of the from-scratch model)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--held", help="the scenario held back from training (default: s2 / healthcare)")
    parser.add_argument("--label", default="extend", help="names this extension's runs and summary in --out")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="for the extension, e.g. extend.vocab=indicators or train.batch_size=128")
    args = parser.parse_args()
    if args.data == "models":
        every_model(args.out)
        return
    held = args.held or HELD[args.data]
    old, new, schema = tables(args.data, held)
    args.out.mkdir(parents=True, exist_ok=True)
    mark = args.out / "held_back.txt"  # the runs kept in --out were trained without this scenario
    if mark.exists() and mark.read_text() != f"{args.data} {held}":
        raise SystemExit(f"{args.out} holds runs trained without {mark.read_text()}; choose another --out")
    mark.write_text(f"{args.data} {held}")
    pq.write_table(old, args.out / "old.parquet")
    pq.write_table(new, args.out / "new.parquet")
    per_seed = {}
    for seed in args.seeds:  # the summary so far after every seed (a long benchmark can be stopped)
        per_seed[seed] = one_seed(args, schema, seed)
        summary = {"data": args.data, "held_back": held, "old_rows": old.num_rows,
                   "new_rows": new.num_rows, "set": args.overrides, **pooled(per_seed)}
        (args.out / f"{args.label}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
