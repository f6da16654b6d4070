"""AUC, logloss and GAUC on tensors, overall, per scenario and macro over scenarios.

AUC uses the rank-sum (Mann-Whitney) form with tied scores given their average rank, as scikit-learn
does. A set with a single class has no AUC: NaN, and it is left out of macro averages. Per-scenario (and
per-level) figures come from one vectorised pass over all rows, whatever the number of scenarios.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from msrec.schema import ScenarioLevels

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


def segment_aucs(labels: Tensor, scores: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each present group's key, AUC (NaN for a group of one class) and rows, in ascending key order, from two
    stable sorts for all groups together (by score, then by group): ranks with ties averaged inside each group,
    then the Mann-Whitney formula per group with `index_add_`. The same numbers as `auc` on each group's rows
    (rank sums of half-integers are exact in float64, whatever the order they are added in)."""
    y = labels.reshape(-1).double()
    s = scores.reshape(-1).double()
    g = groups.reshape(-1).long()
    if g.numel() == 0:
        return g, torch.zeros(0, dtype=torch.double), torch.zeros(0, dtype=torch.double)
    order = torch.argsort(s, stable=True)
    order = order[torch.argsort(g[order], stable=True)]  # by group, then by score within the group
    g_sorted, y_sorted = g[order], y[order]
    group_start = torch.ones_like(g_sorted, dtype=torch.bool)
    group_start[1:] = g_sorted[1:] != g_sorted[:-1]
    global_ranks = _tie_averaged_ranks(s[order], group_start)
    keys, gid = torch.unique_consecutive(g_sorted, return_inverse=True)
    n_groups = keys.numel()
    size = torch.bincount(gid, minlength=n_groups).double()
    first = torch.cumsum(size, 0) - size
    ranks = global_ranks - first[gid]  # rank within the group
    pos = torch.zeros(n_groups, dtype=torch.double).index_add_(0, gid, y_sorted)
    rank_sum = torch.zeros(n_groups, dtype=torch.double).index_add_(0, gid, ranks * y_sorted)
    neg = size - pos
    per_group = (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
    return keys, torch.where((pos > 0) & (neg > 0), per_group, torch.nan), size


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
        _, user = torch.unique(users.reshape(-1), return_inverse=True)
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

