"""Summaries of a benchmark grid: mean +- std over seeds, and paired differences against a reference model.

The significance of a difference comes from a two-level (hierarchical) paired bootstrap:

1. within a seed, the test rows are resampled with Poisson(1) weights, the SAME weights for the model and
   the reference, so both are scored on the same resampled rows (paired);
2. across seeds, each replicate draws the seeds with replacement and averages their per-seed differences.

The interval therefore covers both the test-sampling noise (level 1) and the training noise between seeds
(level 2), so a gain that one lucky seed or one lucky test split produces does not look real. With one seed
only level 1 is left. All of it is whole-array numpy: one weight matrix `[B, n]` per seed and chunk, and every
scenario's replicates from one sort of its rows, so that the cost follows the rows, not the scenarios.
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
    s, y, w = scores[order], labels[order].astype(bool), np.take(weights, order, axis=1)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # tie groups are contiguous once sorted
    w_pos = np.add.reduceat(w * y, starts, axis=1).astype(np.float64)  # integer weights: float32 sums exact
    w_neg = np.add.reduceat(w, starts, axis=1).astype(np.float64) - w_pos
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


def segment_weighted_metrics(labels: np.ndarray, scores: np.ndarray, segment: np.ndarray, n_segments: int,
                             weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`weighted_auc`, `weighted_logloss` and the weight sum of every segment (scenario) under each row of
    `weights`, as [B, n_segments] arrays (NaN where undefined), in one pass for all segments: one sort by
    (segment, score), tie groups that never span two segments, sums per tie group and per segment by
    `np.add.reduceat`, and each segment's negatives below a tie group from one cumulative sum less its value
    at the segment's start. No Python loop over segments."""
    b = weights.shape[0]
    out = [np.full((b, n_segments), np.nan) for _ in range(3)]
    if not len(labels):
        return out[0], out[1], np.zeros((b, n_segments))
    order = np.lexsort((scores, segment))
    g, s, y = segment[order], scores[order], labels[order].astype(bool)
    w = np.take(weights, order, axis=1)  # Poisson weights: float32 sums of a tie group are exact integers
    new_segment = np.r_[True, g[1:] != g[:-1]]
    tie_starts = np.flatnonzero(new_segment | np.r_[True, s[1:] != s[:-1]])
    w_pos = np.add.reduceat(w * y, tie_starts, axis=1).astype(np.float64)  # [B, tie groups]
    w_neg = np.add.reduceat(w, tie_starts, axis=1).astype(np.float64) - w_pos
    tie_segment_start = np.flatnonzero(new_segment[tie_starts])  # the first tie group of each segment
    below = np.cumsum(w_neg, axis=1) - w_neg  # negatives before the tie group, over all segments
    pos, neg = np.add.reduceat(w_pos, tie_segment_start, axis=1), np.add.reduceat(w_neg, tie_segment_start, axis=1)
    # within a segment, the negatives below a tie group are `below` less its value at the segment's first tie
    # group; that constant times the segment's positives comes off the sum (integers and halves: exact)
    num = np.add.reduceat(w_pos * (below + 0.5 * w_neg), tie_segment_start, axis=1) - below[:, tie_segment_start] * pos
    p = np.clip(s[tie_starts].astype(np.float64), LOGLOSS_EPS, 1 - LOGLOSS_EPS)  # one score per tie group
    loss = np.add.reduceat(w_pos * -np.log(p) + w_neg * -np.log(1 - p), tie_segment_start, axis=1)
    present = g[new_segment]
    total = pos + neg
    with np.errstate(invalid="ignore", divide="ignore"):
        out[0][:, present] = np.where(pos * neg > 0, num / np.where(pos * neg > 0, pos * neg, 1), np.nan)
        out[1][:, present] = loss / total  # a replicate that drew none of the segment's rows: NaN
    out[2] = np.zeros((b, n_segments))
    out[2][:, present] = total
    return out[0], out[1], out[2]


def replicate_metrics(labels: np.ndarray, scores: np.ndarray, scenario: np.ndarray, scenario_names: list[str],
                      replicates: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """metric -> column (scenario names, "overall", "macro", "weighted_macro") -> [replicates] values of one
    task's scores; every scenario's in one pass (`segment_weighted_metrics`), whatever their number.

    The weights depend only on (`seed`, the number of rows), so two runs scored on the same test rows
    with the same `seed` are resampled identically: their replicate differences are paired."""
    rng = np.random.default_rng(seed)
    y = labels.astype(np.float64)
    n_s = len(scenario_names)
    parts: dict[str, list] = {"auc": [], "logloss": [], "overall_auc": [], "overall_logloss": [], "rows": []}
    for start in range(0, replicates, CHUNK):
        w = rng.poisson(1.0, (min(CHUNK, replicates - start), len(y))).astype(np.float32)
        per_auc, per_loss, rows = segment_weighted_metrics(y, scores, scenario, n_s, w)
        for key, part in (("auc", per_auc), ("logloss", per_loss), ("rows", rows),
                          ("overall_auc", weighted_auc(y, scores, w)), ("overall_logloss", weighted_logloss(y, scores, w))):
            parts[key].append(part)
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    result = {}
    for m in ("auc", "logloss"):
        per = arrays[m]  # [replicates, scenarios]
        cols = {name: per[:, k] for k, name in enumerate(scenario_names)}
        cols["overall"] = arrays[f"overall_{m}"]
        ok = ~np.isnan(per)
        weight = np.where(ok, arrays["rows"], 0)
        with np.errstate(all="ignore"):  # a replicate where no scenario has a value: NaN
            cols["macro"] = np.where(ok, per, 0).sum(1) / ok.sum(1)
            cols["weighted_macro"] = np.where(ok, per * weight, 0).sum(1) / weight.sum(1)
        result[m] = cols
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
    return paired_differences(np.asarray(observed, dtype=np.float64)[:, None], np.stack(replicates)[:, :, None],
                              higher_is_better, seed)[0]


def paired_differences(observed: np.ndarray, replicates: np.ndarray, higher_is_better: bool,
                       seed: int = 0) -> list[Difference]:
    """`paired_difference` of many columns (scenarios) at once: `observed` [k seeds, C], `replicates`
    [k, B, C]. Every column draws the same seeds and replicates (the same generator and seed as one column
    alone), so a column's figures are the ones `paired_difference` gives it."""
    k, b, _ = replicates.shape
    obs = observed.astype(np.float64)
    rng = np.random.default_rng(seed)
    if k == 1:
        combined = replicates[0].astype(np.float64)
    else:
        pick_seed = rng.integers(0, k, (b, k))
        pick_rep = rng.integers(0, b, (b, k))  # a fresh row resample for every draw of a seed
        combined = replicates[pick_seed, pick_rep].mean(1)  # [B, C]
    finite = np.isfinite(combined)
    count = finite.sum(0)
    usable = (count > 0) & np.isfinite(obs).all(0)
    with np.errstate(all="ignore"):
        low, high = np.nanquantile(np.where(finite, combined, np.nan)[:, usable], [0.025, 0.975], axis=0)
        below = (finite & (combined <= 0)).sum(0) / count
        above = (finite & (combined >= 0)).sum(0) / count
    wins = ((obs > 0) if higher_is_better else (obs < 0)).sum(0)
    out, j = [], 0
    for c in range(obs.shape[1]):
        if not usable[c]:
            finite_obs = obs[:, c][np.isfinite(obs[:, c])]
            out.append(Difference(float(finite_obs.mean()) if finite_obs.size else math.nan,
                                  math.nan, math.nan, math.nan, 0, k))
            continue
        out.append(Difference(float(obs[:, c].mean()), float(low[j]), float(high[j]),
                              float(min(1.0, 2 * min(below[c], above[c]))), int(wins[c]), k))
        j += 1
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN with fewer than two values); NaNs are left out."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan
