"""AUC, logloss and GAUC on tensors, overall, per scenario and macro over scenarios.

AUC uses the Mann-Whitney form, a tied pair counting one half, as scikit-learn does. A set with a single class has no AUC: NaN, and it is left out of macro averages. Per-scenario (and
per-level) figures come from one vectorised pass over all rows, whatever the number of scenarios.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from msrec.schema import ScenarioLevels

LOGLOSS_EPS = 1e-7


def auc(labels: Tensor, scores: Tensor) -> float:
    if labels.numel() == 0:
        return float("nan")
    return float(segment_aucs(labels, scores, torch.zeros(labels.numel(), dtype=torch.long))[1][0])


def logloss(labels: Tensor, scores: Tensor) -> float:
    if labels.numel() == 0:
        return float("nan")
    p = scores.reshape(-1).double().clamp(LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    y = labels.reshape(-1).double()
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def _group_score_order(g: Tensor, scores: Tensor) -> Tensor:
    """Row order by group, then by score. Scores of 32 bits or fewer and group ids below 2^31 make one int64
    key (the group in the high half, the float's bits made order-preserving in the low half), sorted once;
    otherwise two stable sorts. Rows of equal key are equal in group and score: their order does not matter."""
    if scores.dtype in (torch.float32, torch.float16, torch.bfloat16) and int(g.min()) >= 0 and int(g.max()) < 2**31:
        bits = scores.float().contiguous().view(torch.int32).long()
        bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats: larger magnitude sorts lower
        key = g * 2**32 + (bits + 2**31)
        if key.device.type == "cpu":
            return torch.from_numpy(np.argsort(key.numpy()))
        return torch.argsort(key)
    order = torch.argsort(scores.double(), stable=True)
    return order[torch.argsort(g[order], stable=True)]


def segment_aucs(labels: Tensor, scores: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each present group's key, AUC (NaN for a group of one class) and rows, in ascending key order, from one
    sort of all rows by (group, score) (`_group_score_order`). Rows of one group and one score form a tie
    group; per tie group, its positives and negatives (`bincount`); per group, the Mann-Whitney count
    `sum over tie groups of positives x (negatives below + negatives tied / 2)` over positives x negatives, the
    negatives below a tie group being one cumulative sum less its value at the group's start. Counts and
    half-counts are exact in float64: the same numbers as scikit-learn on each group's rows."""
    y = labels.reshape(-1).double()
    g = groups.reshape(-1).long()
    if g.numel() == 0:
        return g, torch.zeros(0, dtype=torch.double), torch.zeros(0, dtype=torch.double)
    flat = scores.reshape(-1)
    order = _group_score_order(g, flat)
    g_sorted, s_sorted = g[order], flat[order]
    new_group = torch.ones_like(g_sorted, dtype=torch.bool)
    new_group[1:] = g_sorted[1:] != g_sorted[:-1]
    new_tie = new_group.clone()
    new_tie[1:] |= s_sorted[1:] != s_sorted[:-1]
    tie_id = torch.cumsum(new_tie, 0) - 1
    tie_pos = torch.bincount(tie_id, weights=y[order]).double()
    tie_neg = torch.bincount(tie_id).double() - tie_pos
    tie_starts_group = new_group[new_tie]  # per tie group: does it open a group?
    first_tie = torch.nonzero(tie_starts_group).reshape(-1)  # each group's first tie group
    group_of_tie = torch.cumsum(tie_starts_group, 0) - 1
    below = torch.cumsum(tie_neg, 0) - tie_neg
    below = below - below[first_tie][group_of_tie]  # negatives below, within the group
    n_groups = first_tie.numel()

    def per_group(values: Tensor) -> Tensor:
        return torch.zeros(n_groups, dtype=torch.double).index_add_(0, group_of_tie, values)

    pos, neg = per_group(tie_pos), per_group(tie_neg)
    wins = per_group(tie_pos * (below + 0.5 * tie_neg))
    keys = g_sorted[new_group]
    return keys, torch.where((pos > 0) & (neg > 0), wins / (pos * neg), torch.nan), pos + neg


def group_aucs(labels: Tensor, scores: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
    """Each present group's AUC and rows, in ascending group order (`segment_aucs` without the keys)."""
    return segment_aucs(labels, scores, groups)[1:]


def gauc(labels: Tensor, scores: Tensor, groups: Tensor) -> float:
    """Per-group AUC weighted by the group's rows; groups with a single class are skipped."""
    if labels.numel() == 0:
        return float("nan")
    per_group, size = group_aucs(labels, scores, groups)
    valid = ~torch.isnan(per_group)
    if not valid.any():
        return float("nan")
    return float((per_group[valid] * size[valid]).sum() / size[valid].sum())


def _nanmean(values: list[float]) -> float:
    ok = [v for v in values if not math.isnan(v)]
    return sum(ok) / len(ok) if ok else float("nan")


def _weighted_nanmean(values: Tensor, weights: Tensor) -> float:
    ok = ~torch.isnan(values)
    return float((values[ok] * weights[ok]).sum() / weights[ok].sum()) if ok.any() else math.nan


def _block(y: Tensor, p: Tensor, users: Tensor | None, truth: Tensor | None) -> dict:
    out = {"auc": auc(y, p), "logloss": logloss(y, p), "rows": int(y.numel()), "positives": int(y.sum())}
    if users is not None:
        out["gauc"] = gauc(y, p, users)
    if truth is not None and not torch.isnan(truth).any():
        out["oracle_auc"] = auc(y, truth)
    return out


def _scatter(keys: Tensor, values: Tensor, n: int) -> Tensor:
    """Values of the present groups `keys` as a dense [n] tensor, NaN for absent groups."""
    return torch.full((n,), torch.nan, dtype=torch.double).index_copy_(0, keys, values)


def _group_blocks(y: Tensor, p: Tensor, group: Tensor, n: int, users: Tensor | None,
                  truth: Tensor | None) -> tuple[dict[str, Tensor], Tensor]:
    """Every group's metrics as [n] tensors (groups 0..n-1; NaN where absent or undefined), from whole-column
    operations: rows and positives by `bincount`, logloss from per-row losses summed by `bincount`, AUC, GAUC
    (per (group, user) AUCs weighted by rows) and oracle AUC by `segment_aucs`. No Python loop over groups."""
    y, g = y.reshape(-1).double(), group.reshape(-1).long()
    rows = torch.bincount(g, minlength=n).double()
    q = p.reshape(-1).double().clamp(LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    loss = -(y * q.log() + (1 - y) * (1 - q).log())
    out = {"rows": rows, "positives": torch.bincount(g, weights=y, minlength=n).double(),
           "auc": _scatter(*segment_aucs(y, p, g)[:2], n),
           "logloss": torch.bincount(g, weights=loss, minlength=n) / rows}
    if users is not None:
        user = users.reshape(-1).long()
        if user.numel() and (int(user.min()) < 0 or (int(user.max()) + 1) * n >= 2**31):
            user = torch.unique(user, return_inverse=True)[1]  # sparse ids: compacted (the encoder's are dense)
        n_users = int(user.max()) + 1 if user.numel() else 1
        keys, per_user, size = segment_aucs(y, p, g * n_users + user)
        valid = ~torch.isnan(per_user)
        owner = torch.div(keys, n_users, rounding_mode="floor")[valid]
        weighted = torch.zeros(n, dtype=torch.double).index_add_(0, owner, per_user[valid] * size[valid])
        weight = torch.zeros(n, dtype=torch.double).index_add_(0, owner, size[valid])
        out["gauc"] = torch.where(weight > 0, weighted / weight, torch.nan)
    if truth is not None:  # a group with a missing true probability has no oracle AUC
        t = truth.reshape(-1).double()
        has_nan = torch.bincount(g, weights=torch.isnan(t).double(), minlength=n) > 0
        out["oracle_auc"] = torch.where(has_nan, torch.nan, _scatter(*segment_aucs(y, t, g)[:2], n))
    return out, has_nan if truth is not None else torch.ones(n, dtype=torch.bool)


def _named_blocks(columns: dict[str, Tensor], no_oracle: Tensor, names: list[str], first_id: int = 0) -> dict:
    """{name: block} of the groups with rows (ids from `first_id`), as `_block` writes them."""
    values = {k: v.tolist() for k, v in columns.items()}
    out = {}
    for i in range(first_id, len(values["rows"])):
        if values["rows"][i] == 0:
            continue
        block = {"auc": values["auc"][i], "logloss": values["logloss"][i], "rows": int(values["rows"][i]),
                 "positives": int(values["positives"][i])}
        if "gauc" in values:
            block["gauc"] = values["gauc"][i]
        if "oracle_auc" in values and not no_oracle[i]:
            block["oracle_auc"] = values["oracle_auc"][i]
        out[names[i - first_id]] = block
    return out


def _macros(columns: dict[str, Tensor], users: bool, oracle: bool) -> dict:
    """Means over groups of their AUCs: unweighted (macro) and weighted by each group's rows."""
    out = {"macro_auc": _nanmean(columns["auc"].tolist()),
           "weighted_macro_auc": _weighted_nanmean(columns["auc"], columns["rows"])}
    if users:
        out["macro_gauc"] = _nanmean(columns["gauc"].tolist())
    if oracle:
        out["oracle_macro_auc"] = _nanmean(columns["oracle_auc"].tolist())
    return out


def task_report(labels: Tensor, scores: Tensor, scenario: Tensor, scenario_names: list[str],
                users: Tensor | None = None, truth: Tensor | None = None,
                levels: ScenarioLevels | None = None) -> dict:
    """One task's metrics: overall, per scenario (by name), the unweighted and row-weighted means of the
    per-scenario AUCs, and with `levels` (a hierarchical scenario) the same per level value under "levels"."""
    overall = _block(labels, scores, users, truth)
    oracle = "oracle_auc" in overall
    columns, no_oracle = _group_blocks(labels, scores, scenario, len(scenario_names), users, truth)
    report = {"overall": overall, "scenarios": _named_blocks(columns, no_oracle, scenario_names),
              **_macros(columns, users is not None, oracle)}
    if levels is not None:
        report["levels"] = {}
        ids = levels.tensor()
        for j, (column, values) in enumerate(zip(levels.columns, levels.values)):
            level_of_row = ids[scenario.long(), j] if len(scenario) else scenario.long()
            cols, no_o = _group_blocks(labels, scores, level_of_row, len(values) + 1, users, truth)
            named = {k: v[1:] for k, v in cols.items()}  # id 0: combinations fallen back to a parent level
            report["levels"][column] = {"scenarios": _named_blocks(cols, no_o, values, first_id=1),
                                        **_macros(named, users is not None, oracle)}
    return report


def _over_tasks(per_task: dict[str, dict]) -> dict:
    """A split block: each task's block under "tasks", and the means over tasks of what early stopping and
    the epoch log read."""
    weighted = {"weighted_macro_auc": _nanmean([b["weighted_macro_auc"] for b in per_task.values()])} \
        if all("weighted_macro_auc" in b for b in per_task.values()) else {}
    return {"tasks": per_task,
            "macro_auc": _nanmean([b["macro_auc"] for b in per_task.values()]), **weighted,
            "overall": {"auc": _nanmean([b["overall"]["auc"] for b in per_task.values()]),
                        "logloss": _nanmean([b["overall"]["logloss"] for b in per_task.values()])}}


def evaluation_report(labels: Tensor, scores: Tensor, scenario: Tensor, scenario_names: list[str],
                      tasks: list[str], users: Tensor | None = None, truth: Tensor | None = None,
                      levels: ScenarioLevels | None = None) -> dict:
    """The `metrics.json` block of one split, the same shape for any number of tasks: `{"tasks": {task:
    task_report}, "macro_auc" and "weighted_macro_auc": means over tasks, "overall": {"auc", "logloss"}}`."""
    return _over_tasks({t: task_report(labels[:, j], scores[:, j], scenario, scenario_names, users,
                                       None if truth is None else truth[:, j], levels)
                        for j, t in enumerate(tasks)})


def monitor_report(labels: Tensor, scores: Tensor, scenario: Tensor, scenario_names: list[str],
                   tasks: list[str], users: Tensor | None = None, truth: Tensor | None = None,
                   levels: ScenarioLevels | None = None) -> dict:
    """The numbers of `evaluation_report` that validation reads every epoch (per-scenario and overall AUC,
    overall logloss), without GAUC and the per-scenario rows and logloss: the same values, a fraction of the work.
    The per-scenario AUCs (`scenarios: {name: {"auc"}}`) are what experiment tracking logs per epoch."""
    present = [scenario_names[s] for s in torch.unique(scenario).tolist()]  # group_aucs' order

    def by_scenario(j: int) -> dict[str, dict[str, float]]:
        aucs = group_aucs(labels[:, j], scores[:, j], scenario)[0].tolist() if len(scenario) else []
        return {name: {"auc": a} for name, a in zip(present, aucs)}

    def block(j: int) -> dict:
        scenarios = by_scenario(j)
        return {"macro_auc": _nanmean([m["auc"] for m in scenarios.values()]), "scenarios": scenarios,
                "overall": {"auc": auc(labels[:, j], scores[:, j]), "logloss": logloss(labels[:, j], scores[:, j])}}

    return _over_tasks({t: block(j) for j, t in enumerate(tasks)})


def monitor_value(report: dict, monitor: str) -> float:
    """The early-stopping number (higher is better) from a split block (means over tasks)."""
    if monitor == "macro_auc":
        return report["macro_auc"]
    if monitor == "auc":
        return report["overall"]["auc"]
    return -report["overall"]["logloss"]

