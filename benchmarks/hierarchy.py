"""Hierarchical scenarios: per-scenario parameters shared by level against flat per-combination parameters, by
combination size (docs/scenarios.md, "Hierarchical scenarios: parameters shared by level").

Runs (or resumes) the grid of a spec with `msrec.benchmark` (its report.md, results.csv; `--md` a copy), then
for every model of the spec that runs both as `<model>-flat` and `<model>-levels...`, each level-shared
variant against the flat one (the reference): test AUC of groups of combinations by size (the smallest ten, then thirds
by test rows), each group's figure the mean of its combinations' AUCs, with the benchmark's paired hierarchical
bootstrap (report/stats.py: within a seed the test rows resampled with Poisson weights shared by both
variants, across seeds the seeds resampled). The table is printed and appended to the Markdown.

    python benchmarks/hierarchy.py --out runs/benchmarks/hierarchy-synthetic --md benchmarks/results/hierarchy-synthetic.md

`--step`: instead, the cost of a training step's per-scenario part, shared by level against flat: star's FCN
(64 x 32) and split_merge's towers ([64]) over 100-wide inputs, forward and backward on 2,048 rows of the
preset's 57 combinations (12 x 5, the three rarest fallen back) drawn with its Zipf shares, one thread,
interleaved, median of `--repeats`; the ratio is levels / flat.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import msrec
from msrec.bench.spec import resolve_grid
from msrec.bench.store import RunStore
from msrec.nn.mlp import MLPOptions
from msrec.nn.routing import ScenarioRouting
from msrec.nn.star import StarFCN
from msrec.nn.towers import ScenarioTowers
from msrec.report.stats import mean_std, paired_differences, replicate_metrics
from msrec.report.writers import write_report
from msrec.schema import ScenarioLevels

SPEC = Path("benchmarks/specs/hierarchy-synthetic.yaml")  # run from the repository root
SMALLEST = 10


def groups(block: dict) -> dict[str, list[str]]:
    """Combinations by test rows: the smallest ten, then the smallest, middle and largest thirds."""
    names = sorted(block["scenarios"], key=lambda n: block["scenarios"][n]["rows"])
    third = len(names) // 3
    return {f"smallest {SMALLEST}": names[:SMALLEST], "smallest third": names[:third],
            "middle third": names[third:-third], "largest third": names[-third:], "all (macro)": names}


def group_figures(record, task: str, replicates: int, names: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray,
                                                                                               np.ndarray]:
    """A run's labels, each group's mean AUC `[G]` and its bootstrap replicates `[B, G]` (NaN-skipping means)."""
    z, j = record.arrays(), record.tasks.index(task)
    reps = replicate_metrics(z["labels"][:, j], z["scores"][:, j], z["scenario"], record.scenarios, replicates,
                             seed=record.seed)["auc"]
    block = record.block(task)["scenarios"]
    observed = np.array([np.nanmean([block[n]["auc"] for n in group]) for group in names.values()])
    with np.errstate(all="ignore"):
        rep = np.stack([np.nanmean(np.stack([reps[n] for n in group], 1), 1) for group in names.values()], 1)
    return z["labels"][:, j], observed, rep


def pairs_table(result, task: str) -> str:
    by_label = {}
    for r in result.records:
        by_label.setdefault(r.label, {})[r.seed] = r
    pairs = [(label, f"{label.split('-levels')[0]}-flat") for label in result.grid.labels
             if "-levels" in label and f"{label.split('-levels')[0]}-flat" in by_label]
    names = groups(result.records[0].block(task))
    rows_of = result.records[0].block(task)["scenarios"]
    lines = ["| model | combinations | test rows | flat AUC | levels AUC | Δ levels − flat [95% interval] | seeds better |",
             "|---|---|---:|---:|---:|---|---:|"]
    for model, reference in pairs:
        flat, levels = by_label[reference], by_label[model]
        seeds = [s for s in flat if s in levels]
        figures = {}
        for s in seeds:
            (y_f, obs_f, rep_f), (y_l, obs_l, rep_l) = (group_figures(r, task, result.grid.spec.bootstrap, names)
                                                        for r in (flat[s], levels[s]))
            if not np.array_equal(y_f, y_l):
                raise SystemExit(f"{model}: the variants of seed {s} were tested on different rows")
            figures[s] = (obs_f, obs_l, rep_l - rep_f)
        observed = np.stack([figures[s][1] - figures[s][0] for s in seeds])
        found = paired_differences(observed, np.stack([figures[s][2] for s in seeds]), True, seed=len(seeds))
        for g, (group, members) in enumerate(names.items()):
            d = found[g]
            mark = "**" if d.significant and d.delta > 0 else ""
            lines.append(f"| {model} | {group} ({len(members)}) | {sum(rows_of[n]['rows'] for n in members):,} | "
                         f"{mean_std([figures[s][0][g] for s in seeds])[0]:.4f} | "
                         f"{mean_std([figures[s][1][g] for s in seeds])[0]:.4f} | "
                         f"{mark}{d.delta:+.4f} [{d.low:+.4f}, {d.high:+.4f}]{'*' if d.significant else ''}{mark} | "
                         f"{d.wins}/{d.seeds} |")
    return "\n".join(lines)


def step_costs(repeats: int) -> None:
    """Milliseconds per forward + backward of the per-scenario part, flat and shared by level."""
    torch.set_num_threads(1)
    ids = [[c, p] for c in range(1, 13) for p in range(1, 6)]
    ids = ids[:-3] + [[12, 0]]  # the three rarest combinations of the last country fell back to it
    levels = ScenarioLevels(["country", "placement"], [[f"c{i}" for i in range(12)], [f"p{i}" for i in range(5)]], ids)
    share = torch.tensor([1 / (c * max(p, 1)) for c, p in ids])
    scenario = torch.multinomial(share / share.sum(), 2048, replacement=True, generator=torch.Generator().manual_seed(0))
    x, S = torch.randn(2048, 100), len(ids)
    parts = {"star FCN": lambda lv: StarFCN(100, MLPOptions(hidden=[64, 32], dropout=0.0), 1, S, lv),
             "split_merge towers": lambda lv: ScenarioTowers(100, MLPOptions(hidden=[64], dropout=0.0), 1, S, lv)}
    counts = torch.bincount(scenario, minlength=S).tolist()
    print(f"{S} combinations, 2,048 rows, {ScenarioRouting(scenario, S, counts).num_tiles} tiles")
    for name, build in parts.items():
        modules, times = {"flat": build(None), "levels": build(levels)}, {"flat": [], "levels": []}
        for _ in range(repeats):
            for variant, module in modules.items():
                start = time.perf_counter()
                module(x, ScenarioRouting(scenario, S, counts)).sum().backward()
                times[variant].append(time.perf_counter() - start)
        flat, shared = (float(np.median(times[v])) * 1000 for v in ("flat", "levels"))
        print(f"{name:20s} flat {flat:7.1f} ms   levels {shared:7.1f} ms   ratio {shared / flat:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/hierarchy-synthetic"))
    parser.add_argument("--md", type=Path, default=None, help="also write the Markdown report here")
    parser.add_argument("--step", action="store_true", help="time a step's per-scenario part instead")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--report-only", action="store_true",
                        help="only report the runs stored in --out (config keys added since they ran are no error)")
    args = parser.parse_args()
    if args.step:
        step_costs(args.repeats)
        return
    if args.report_only:
        grid = resolve_grid(args.spec, None)
        records, failures = RunStore(args.out).collect(grid)
        write_report(args.out, grid, records, failures, markdown=args.md)
        result = SimpleNamespace(out=args.out, grid=grid, records=records)
    else:
        result = msrec.benchmark(args.spec, out=args.out, markdown=args.md)
    task = result.records[0].tasks[0]
    text = ("\n## Shared by level against flat, by combination size\n\n"
            "Each model's level-shared variant against its flat one (the reference), on groups of combinations by "
            "test rows: a group's AUC is the mean of its combinations' test AUCs (mean over seeds), Δ its "
            "difference with the 95% interval of the benchmark's paired hierarchical bootstrap "
            f"({result.grid.spec.bootstrap} replicates: test rows resampled with Poisson weights shared by both "
            "variants within a seed, seeds resampled across); *: the interval excludes 0. "
            "Written by `python benchmarks/hierarchy.py`.\n\n" + pairs_table(result, task) + "\n")
    print(text)
    for path in filter(None, [result.out / "report.md", args.md]):
        path.write_text(path.read_text() + text)


if __name__ == "__main__":
    main()
