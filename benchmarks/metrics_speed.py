"""Per-scenario metrics at many scenarios: the one-pass evaluation against the per-scenario loop it replaced
(issue 13 item 4).

    python benchmarks/metrics_speed.py                       # 1,000 scenarios x 1M rows, 5 repeats
    python benchmarks/metrics_speed.py --rows 20000 --scenarios 100 --repeats 1 --bootstrap-rows 5000

Rows fall into scenarios with Zipf shares (1/(k+1)), every scenario present; labels and scores are random,
scores on a grid of 1,000 values (ties, as model outputs have). Measured, each side in turn within a repeat
(which side runs first alternates), medians over the repeats and the median of the repeats' ratios:

- `auc`: each scenario's AUC. *loop*: msrec's previous `task_report` path, one sort per scenario
  (`auc(y[rows], p[rows])` over the scenarios' row slices, with the previous `auc`, copied below); *one pass*:
  `segment_aucs`.
- `report`: the whole `task_report` of one task (per-scenario AUC, logloss, rows, positives, GAUC over 10,000
  users, macro means). *loop*: the previous code (copied below); *one pass*: `msrec.train.metrics.task_report`.
- `bootstrap`: `replicate_metrics` (per-scenario bootstrap replicates of AUC and logloss, `--replicates`) on
  `--bootstrap-rows` rows: the previous per-scenario loop (copied below) against the one-pass version.

The loop and the one pass are checked to give the same numbers before anything is timed.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from msrec.report.stats import CHUNK, replicate_metrics, weighted_auc, weighted_logloss
from msrec.train.metrics import _nanmean, logloss, segment_aucs, task_report


# ------------------------------------------------------------------------- the previous code, per scenario
def _tie_averaged_ranks(sorted_scores: torch.Tensor, group_start: torch.Tensor | None = None) -> torch.Tensor:
    n = sorted_scores.numel()
    new_value = torch.ones(n, dtype=torch.bool)
    new_value[1:] = sorted_scores[1:] != sorted_scores[:-1]
    if group_start is not None:
        new_value |= group_start
    tie_id = new_value.cumsum(0) - 1
    counts = torch.bincount(tie_id).double()
    first_pos = torch.cumsum(counts, 0) - counts
    avg_rank = first_pos + (counts + 1) / 2
    return avg_rank[tie_id]


def auc(labels: torch.Tensor, scores: torch.Tensor) -> float:
    labels = labels.reshape(-1).double()
    scores = scores.reshape(-1).double()
    pos = labels.sum()
    neg = labels.numel() - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    ranks = _tie_averaged_ranks(scores[order])
    rank_sum = (ranks * labels[order]).sum()
    return float((rank_sum - pos * (pos + 1) / 2) / (pos * neg))


def gauc(labels: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor) -> float:
    y, s, g = labels.reshape(-1).double(), scores.reshape(-1).double(), groups.reshape(-1).long()
    order = torch.argsort(s, stable=True)
    order = order[torch.argsort(g[order], stable=True)]
    g_sorted, y_sorted = g[order], y[order]
    group_start = torch.ones_like(g_sorted, dtype=torch.bool)
    group_start[1:] = g_sorted[1:] != g_sorted[:-1]
    global_ranks = _tie_averaged_ranks(s[order], group_start)
    _, gid = torch.unique_consecutive(g_sorted, return_inverse=True)
    n_groups = int(gid.max()) + 1
    size = torch.bincount(gid, minlength=n_groups).double()
    ranks = global_ranks - (torch.cumsum(size, 0) - size)[gid]
    pos = torch.zeros(n_groups, dtype=torch.double).index_add_(0, gid, y_sorted)
    rank_sum = torch.zeros(n_groups, dtype=torch.double).index_add_(0, gid, ranks * y_sorted)
    neg = size - pos
    per_group = torch.where((pos > 0) & (neg > 0), (rank_sum - pos * (pos + 1) / 2) / (pos * neg), torch.nan)
    valid = ~torch.isnan(per_group)
    return float((per_group[valid] * size[valid]).sum() / size[valid].sum()) if valid.any() else math.nan


def _scenario_rows(scenario: torch.Tensor, names: list[str]) -> list[tuple[str, torch.Tensor]]:
    order = torch.argsort(scenario, stable=True)
    counts = torch.bincount(scenario, minlength=len(names)).tolist()
    return [(names[s], rows) for s, rows in enumerate(order.split(counts)) if rows.numel()]


def loop_aucs(y: torch.Tensor, p: torch.Tensor, scenario: torch.Tensor, names: list[str]) -> list[float]:
    return [auc(y[rows], p[rows]) for _, rows in _scenario_rows(scenario, names)]


def loop_task_report(y: torch.Tensor, p: torch.Tensor, scenario: torch.Tensor, names: list[str],
                     users: torch.Tensor) -> dict:
    def block(yy, pp, uu):
        return {"auc": auc(yy, pp), "logloss": logloss(yy, pp), "rows": int(yy.numel()),
                "positives": int(yy.sum()), "gauc": gauc(yy, pp, uu)}

    scenarios = {name: block(y[rows], p[rows], users[rows]) for name, rows in _scenario_rows(scenario, names)}
    return {"overall": block(y, p, users), "scenarios": scenarios,
            "macro_auc": _nanmean([m["auc"] for m in scenarios.values()]),
            "macro_gauc": _nanmean([m["gauc"] for m in scenarios.values()])}


def loop_replicates(labels: np.ndarray, scores: np.ndarray, scenario: np.ndarray, names: list[str],
                    replicates: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    y = labels.astype(np.float64)
    columns = [*names, "overall"]
    out: dict = {m: {c: [] for c in columns} for m in ("auc", "logloss")}
    rows = {name: np.flatnonzero(scenario == s) for s, name in enumerate(names)}
    for start in range(0, replicates, CHUNK):
        w = rng.poisson(1.0, (min(CHUNK, replicates - start), len(y))).astype(np.float32)
        for name in columns:
            r = rows.get(name, slice(None))
            out["auc"][name].append(weighted_auc(y[r], scores[r], w[:, r]))
            out["logloss"][name].append(weighted_logloss(y[r], scores[r], w[:, r]))
    return {m: {c: np.concatenate(v) for c, v in cols.items()} for m, cols in out.items()}


# ------------------------------------------------------------------------------------------------ data
def data(rows: int, scenarios: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    share = 1.0 / np.arange(1, scenarios + 1)
    s = rng.choice(scenarios, rows, p=share / share.sum())
    s[:scenarios] = np.arange(scenarios)
    y = (rng.random(rows) < 0.3).astype(np.float32)
    p = (rng.integers(0, 1000, rows) / 1000).astype(np.float32)
    users = rng.integers(0, 10_000, rows)
    return y, p, s, users


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(name: str, loop: Callable[[], object], one_pass: Callable[[], object], repeats: int) -> None:
    t_loop, t_pass, ratios = [], [], []
    for k in range(repeats):
        if k % 2:
            b, a = timed(one_pass), timed(loop)
        else:
            a, b = timed(loop), timed(one_pass)
        t_loop.append(a)
        t_pass.append(b)
        ratios.append(a / b)
    print(f"{name:<10} {statistics.median(t_loop):>10.3f} {statistics.median(t_pass):>10.3f} "
          f"{statistics.median(ratios):>9.1f}x", flush=True)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--scenarios", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bootstrap-rows", type=int, default=200_000)
    ap.add_argument("--replicates", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [f"s{k}" for k in range(args.scenarios)]
    y, p, s, u = data(args.rows, args.scenarios)
    ty, tp, ts, tu = map(torch.from_numpy, (y, p, s, u))

    got = segment_aucs(ty, tp, ts)[1].tolist()
    assert all(same(a, b) for a, b in zip(loop_aucs(ty, tp, ts, names), got, strict=True))
    new, old = task_report(ty, tp, ts, names, tu), loop_task_report(ty, tp, ts, names, tu)
    assert all(same(new["scenarios"][n][m], old["scenarios"][n][m]) for n in names for m in old["scenarios"][n])
    by, bp, bs = y[:args.bootstrap_rows], p[:args.bootstrap_rows], np.minimum(s[:args.bootstrap_rows],
                                                                              args.scenarios - 1)
    rep_new = replicate_metrics(by, bp, bs, names, args.replicates, 0)
    rep_old = loop_replicates(by, bp, bs, names, args.replicates, 0)
    present = set(np.unique(bs).tolist())
    for n in [names[k] for k in sorted(present)] + ["overall"]:
        np.testing.assert_allclose(rep_new["auc"][n], rep_old["auc"][n], rtol=1e-9, atol=1e-12)

    print(f"{args.rows:,} rows, {args.scenarios:,} scenarios (Zipf shares; smallest "
          f"{np.bincount(s).min():,} rows), {args.threads} thread(s), median of {args.repeats}; "
          f"bootstrap: {args.bootstrap_rows:,} rows x {args.replicates} replicates")
    print(f"{'metric':<10} {'loop s':>10} {'one pass s':>10} {'speed-up':>10}")
    compare("auc", lambda: loop_aucs(ty, tp, ts, names), lambda: segment_aucs(ty, tp, ts), args.repeats)
    compare("report", lambda: loop_task_report(ty, tp, ts, names, tu), lambda: task_report(ty, tp, ts, names, tu),
            args.repeats)
    compare("bootstrap", lambda: loop_replicates(by, bp, bs, names, args.replicates, 0),
            lambda: replicate_metrics(by, bp, bs, names, args.replicates, 0), args.repeats)


if __name__ == "__main__":
    main()
