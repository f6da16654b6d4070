"""AUC, logloss and GAUC on tensors, overall, per scenario and macro over scenarios.

AUC uses the rank-sum (Mann-Whitney) form with tied scores given their average rank, as scikit-learn
does. A set with a single class has no AUC: NaN, and it is left out of macro averages.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOGLOSS_EPS = 1e-7


def _tie_averaged_ranks(sorted_scores: Tensor, group_start: Tensor | None = None) -> Tensor:
    """1-based ranks of already-sorted scores, ties sharing their average rank. With `group_start`
    (True where a new group begins), ties never span two groups."""
    n = sorted_scores.numel()
    new_value = torch.ones(n, dtype=torch.bool, device=sorted_scores.device)
    new_value[1:] = sorted_scores[1:] != sorted_scores[:-1]
    if group_start is not None:
        new_value |= group_start
    tie_id = new_value.cumsum(0) - 1
    counts = torch.bincount(tie_id).double()
    first_pos = torch.cumsum(counts, 0) - counts  # 0-based position of each tie group's first element
    avg_rank = first_pos + (counts + 1) / 2
    return avg_rank[tie_id]


def auc(labels: Tensor, scores: Tensor) -> float:
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


def logloss(labels: Tensor, scores: Tensor) -> float:
    if labels.numel() == 0:
        return float("nan")
    p = scores.reshape(-1).double().clamp(LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    y = labels.reshape(-1).double()
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def group_aucs(labels: Tensor, scores: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
    """Each present group's AUC (NaN for a group of one class) and its rows, in ascending group order, from
    two sorts for all groups together. The same numbers as `auc` on each group's rows (rank sums of
    half-integers are exact in float64, whatever the order they are added in)."""
    y = labels.reshape(-1).double()
    s = scores.reshape(-1).double()
    g = groups.reshape(-1).long()
    order = torch.argsort(s, stable=True)
    order = order[torch.argsort(g[order], stable=True)]  # by group, then by score within the group
    g_sorted, y_sorted = g[order], y[order]
    group_start = torch.ones_like(g_sorted, dtype=torch.bool)
    group_start[1:] = g_sorted[1:] != g_sorted[:-1]
    global_ranks = _tie_averaged_ranks(s[order], group_start)
    _, gid = torch.unique_consecutive(g_sorted, return_inverse=True)
    n_groups = int(gid.max()) + 1
    size = torch.bincount(gid, minlength=n_groups).double()
    first = torch.cumsum(size, 0) - size
    ranks = global_ranks - first[gid]  # rank within the group
    pos = torch.zeros(n_groups, dtype=torch.double).index_add_(0, gid, y_sorted)
    rank_sum = torch.zeros(n_groups, dtype=torch.double).index_add_(0, gid, ranks * y_sorted)
    neg = size - pos
    per_group = (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
    return torch.where((pos > 0) & (neg > 0), per_group, torch.nan), size


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


def _block(y: Tensor, p: Tensor, users: Tensor | None, truth: Tensor | None) -> dict:
    out = {"auc": auc(y, p), "logloss": logloss(y, p), "rows": int(y.numel()), "positives": int(y.sum())}
    if users is not None:
        out["gauc"] = gauc(y, p, users)
    if truth is not None and not torch.isnan(truth).any():
        out["oracle_auc"] = auc(y, truth)
    return out


def _scenario_rows(scenario: Tensor, scenario_names: list[str]) -> list[tuple[str, Tensor]]:
    """Each present scenario's name and row indices: one sort, then each scenario's rows are one slice."""
    order = torch.argsort(scenario, stable=True)
    counts = torch.bincount(scenario, minlength=len(scenario_names)).tolist()
    return [(scenario_names[s], rows) for s, rows in enumerate(order.split(counts)) if rows.numel()]


def task_report(labels: Tensor, scores: Tensor, scenario: Tensor, scenario_names: list[str],
                users: Tensor | None = None, truth: Tensor | None = None) -> dict:
    """One task's metrics: overall, per scenario (by name) and the macro mean of the per-scenario AUCs."""
    overall = _block(labels, scores, users, truth)
    scenarios = {name: _block(labels[rows], scores[rows], None if users is None else users[rows],
                              None if truth is None else truth[rows])
                 for name, rows in _scenario_rows(scenario, scenario_names)}
    report = {"overall": overall, "scenarios": scenarios,
              "macro_auc": _nanmean([m["auc"] for m in scenarios.values()])}
    if users is not None:
        report["macro_gauc"] = _nanmean([m["gauc"] for m in scenarios.values()])
    if "oracle_auc" in overall:
        report["oracle_macro_auc"] = _nanmean([m.get("oracle_auc", float("nan")) for m in scenarios.values()])
    return report


def _over_tasks(per_task: dict[str, dict]) -> dict:
    """A split block: each task's block under "tasks", and the means over tasks of what early stopping and
    the epoch log read."""
    return {"tasks": per_task,
            "macro_auc": _nanmean([b["macro_auc"] for b in per_task.values()]),
            "overall": {"auc": _nanmean([b["overall"]["auc"] for b in per_task.values()]),
                        "logloss": _nanmean([b["overall"]["logloss"] for b in per_task.values()])}}


def evaluation_report(labels: Tensor, scores: Tensor, scenario: Tensor, scenario_names: list[str],
                      tasks: list[str], users: Tensor | None = None, truth: Tensor | None = None) -> dict:
    """The `metrics.json` block of one split, the same shape for any number of tasks:
    `{"tasks": {task: task_report}, "macro_auc": mean over tasks, "overall": {"auc", "logloss"}}`."""
    return _over_tasks({t: task_report(labels[:, j], scores[:, j], scenario, scenario_names, users,
                                       None if truth is None else truth[:, j])
                        for j, t in enumerate(tasks)})


def monitor_report(labels: Tensor, scores: Tensor, scenario: Tensor, scenario_names: list[str],
                   tasks: list[str], users: Tensor | None = None, truth: Tensor | None = None) -> dict:
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

