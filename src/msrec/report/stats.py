"""Summaries of a benchmark grid: mean +- std over seeds, and paired differences against a reference model.

The significance of a difference comes from a two-level (hierarchical) paired bootstrap:

1. within a seed, the test rows are resampled with Poisson(1) weights, the SAME weights for the model and
   the reference, so both are scored on the same resampled rows (paired);
2. across seeds, each replicate draws the seeds with replacement and averages their per-seed differences.

The interval therefore covers both the test-sampling noise (level 1) and the training noise between seeds
(level 2), so a gain that one lucky seed or one lucky test split produces does not look real. With one seed
only level 1 is left. All of it is whole-array numpy: one weight matrix `[B, n]` per seed and chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from msrec.train.metrics import LOGLOSS_EPS

CHUNK = 250  # bootstrap replicates per weight matrix (bounds memory to CHUNK x test rows)


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of each row of `weights` ([B, n] non-negative row weights); ties count one half, as in the
    rank-sum AUC. NaN where a replicate holds a single class."""
    order = np.argsort(scores, kind="stable")
    s, y, w = scores[order], labels[order].astype(bool), weights[:, order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # tie groups are contiguous once sorted
    w_pos = np.add.reduceat(w * y, starts, axis=1)
    w_neg = np.add.reduceat(w * ~y, starts, axis=1)
    below = np.cumsum(w_neg, axis=1) - w_neg
    num = (w_pos * (below + 0.5 * w_neg)).sum(1)
    den = w_pos.sum(1) * w_neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def weighted_logloss(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    p = np.clip(scores.astype(np.float64), LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    loss = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    w = weights.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # a replicate that drew no row: NaN, left out later
        return (w @ loss) / w.sum(1)


def replicate_metrics(labels: np.ndarray, scores: np.ndarray, scenario: np.ndarray, scenario_names: list[str],
                      replicates: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """metric -> column (scenario names, "overall", "macro") -> [replicates] values of one task's scores.

    The weights depend only on (`seed`, the number of rows), so two runs scored on the same test rows
    with the same `seed` are resampled identically: their replicate differences are paired."""
    rng = np.random.default_rng(seed)
    y = labels.astype(np.float64)
    columns = [*scenario_names, "overall"]
    out: dict[str, dict[str, list]] = {m: {c: [] for c in columns} for m in ("auc", "logloss")}
    rows = {name: np.flatnonzero(scenario == s) for s, name in enumerate(scenario_names)}
    for start in range(0, replicates, CHUNK):
        w = rng.poisson(1.0, (min(CHUNK, replicates - start), len(y))).astype(np.float32)
        for name in columns:
            r = rows.get(name, slice(None))
            out["auc"][name].append(weighted_auc(y[r], scores[r], w[:, r]))
            out["logloss"][name].append(weighted_logloss(y[r], scores[r], w[:, r]))
    result = {m: {c: np.concatenate(v) for c, v in cols.items()} for m, cols in out.items()}
    for cols in result.values():
        with np.errstate(all="ignore"):
            cols["macro"] = np.nanmean(np.stack([cols[n] for n in scenario_names]), 0)
    return result


@dataclass
class Difference:
    """Model minus reference, averaged over the seeds where both ran."""

    delta: float
    low: float  # 95% bootstrap interval
    high: float
    p_value: float  # two-sided: how often the bootstrap difference falls on the other side of zero
    wins: int  # seeds where the model beats the reference (higher AUC / lower logloss)
    seeds: int

    @property
    def significant(self) -> bool:
        return not (self.low <= 0 <= self.high)


def paired_difference(observed: list[float], replicates: list[np.ndarray], higher_is_better: bool,
                      seed: int = 0) -> Difference:
    """`observed[k]`: the model's metric minus the reference's on seed k; `replicates[k]`: [B] bootstrap
    differences of seed k (paired rows). Seeds are resampled with replacement in every replicate."""
    k = len(observed)
    obs = np.asarray(observed, dtype=np.float64)
    reps = np.stack(replicates)  # [k, B]
    b = reps.shape[1]
    rng = np.random.default_rng(seed)
    if k == 1:
        combined = reps[0]
    else:
        pick_seed = rng.integers(0, k, (b, k))
        pick_rep = rng.integers(0, b, (b, k))  # a fresh row resample for every draw of a seed
        combined = reps[pick_seed, pick_rep].mean(1)
    combined = combined[np.isfinite(combined)]
    if combined.size == 0 or not np.isfinite(obs).all():
        return Difference(float(np.nanmean(obs)) if np.isfinite(obs).any() else math.nan,
                          math.nan, math.nan, math.nan, 0, k)
    low, high = np.quantile(combined, [0.025, 0.975])
    p = min(1.0, 2 * min((combined <= 0).mean(), (combined >= 0).mean()))
    wins = int((obs > 0).sum() if higher_is_better else (obs < 0).sum())
    return Difference(float(obs.mean()), float(low), float(high), float(p), wins, k)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN with fewer than two values); NaNs are left out."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan
