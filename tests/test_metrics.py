"""AUC, logloss and GAUC on tensors against scikit-learn, on random and adversarial inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from msrec.train.metrics import LOGLOSS_EPS, auc, evaluation_report, gauc, logloss, monitor_report

# A handful of score values forces ties; the float32 grid mimics model output.
FEW_SCORES = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5000001, 0.9, 1.0])
ANY_SCORES = st.floats(0.0, 1.0, allow_nan=False, width=32)


def rows(scores=ANY_SCORES, min_size=1, max_size=60):
    return st.lists(st.tuples(st.integers(0, 1), scores), min_size=min_size, max_size=max_size)


def tensors(data):
    y = torch.tensor([r[0] for r in data], dtype=torch.float32)
    p = torch.tensor([r[1] for r in data], dtype=torch.float32)
    return y, p


def sk_auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else math.nan


def sk_logloss(y: np.ndarray, p: np.ndarray) -> float:
    return float(log_loss(y, np.clip(p, LOGLOSS_EPS, 1 - LOGLOSS_EPS), labels=[0, 1])) if len(y) else math.nan


def sk_gauc(y: np.ndarray, p: np.ndarray, g: np.ndarray) -> float:
    """Reference GAUC: per-group scikit-learn AUC weighted by the group's rows, one-class groups skipped."""
    total = weight = 0.0
    for group in np.unique(g):
        m = g == group
        if 0 < y[m].sum() < m.sum():
            total += roc_auc_score(y[m], p[m]) * m.sum()
            weight += m.sum()
    return total / weight if weight else math.nan


def same(a: float, b: float, tol: float = 1e-9) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


@settings(max_examples=100, deadline=None)
@given(data=st.one_of(rows(FEW_SCORES), rows(ANY_SCORES)))
def test_auc_matches_sklearn_with_ties_and_one_class(data):
    y, p = tensors(data)
    assert same(auc(y, p), sk_auc(y.numpy(), p.numpy().astype(np.float64)))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 5000), distinct=st.integers(1, 50))
def test_auc_matches_sklearn_on_larger_random_inputs(seed, n, distinct):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = rng.integers(0, distinct, n) / distinct  # heavy ties when `distinct` is small
    assert same(auc(torch.from_numpy(y), torch.from_numpy(p)), sk_auc(y, p))


def test_auc_edge_cases():
    assert auc(torch.tensor([0.0, 1.0]), torch.tensor([0.3, 0.7])) == 1.0
    assert auc(torch.tensor([1.0, 0.0]), torch.tensor([0.3, 0.7])) == 0.0
    assert auc(torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.full((4,), 0.5)) == 0.5  # all tied
    assert math.isnan(auc(torch.ones(5), torch.rand(5)))
    assert math.isnan(auc(torch.zeros(5), torch.rand(5)))
    assert math.isnan(auc(torch.zeros(0), torch.zeros(0)))


@settings(max_examples=100, deadline=None)
@given(data=rows(st.one_of(FEW_SCORES, st.floats(0.0, 1.0, allow_nan=False)), min_size=1))
def test_logloss_matches_sklearn_including_extreme_scores(data):
    y, p = tensors(data)
    assert same(logloss(y, p), sk_logloss(y.numpy(), p.numpy().astype(np.float64)), 1e-6)


def test_logloss_of_empty_set_is_nan():
    assert math.isnan(logloss(torch.zeros(0), torch.zeros(0)))


@settings(max_examples=80, deadline=None)
@given(data=st.lists(st.tuples(st.integers(0, 1), st.one_of(FEW_SCORES, ANY_SCORES), st.integers(0, 6)),
                     min_size=1, max_size=80))
def test_gauc_matches_per_user_sklearn_reference(data):
    y = np.array([r[0] for r in data], dtype=np.float64)
    p = np.array([r[1] for r in data], dtype=np.float32)
    g = np.array([r[2] for r in data])
    got = gauc(torch.from_numpy(y), torch.from_numpy(p), torch.from_numpy(g))
    assert same(got, sk_gauc(y, p.astype(np.float64), g))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), users=st.integers(1, 80), distinct=st.integers(1, 20))
def test_gauc_on_larger_inputs_with_sparse_user_ids(seed, users, distinct):
    rng = np.random.default_rng(seed)
    n = 2000
    g = rng.choice(rng.integers(0, 10**9, users), n)  # large, non-contiguous user ids
    y = rng.integers(0, 2, n)
    p = rng.integers(0, distinct, n) / distinct
    assert same(gauc(torch.from_numpy(y), torch.from_numpy(p), torch.from_numpy(g)), sk_gauc(y, p, g))


def test_gauc_weights_users_by_impressions_and_skips_one_class_users():
    # user 0: 4 rows, AUC 1; user 1: 2 rows, AUC 0; user 2: one class only (skipped).
    y = torch.tensor([0, 0, 1, 1, 1, 0, 1, 1, 1], dtype=torch.float32)
    p = torch.tensor([0.1, 0.2, 0.8, 0.9, 0.1, 0.9, 0.5, 0.6, 0.7])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2])
    assert gauc(y, p, g) == pytest.approx((1.0 * 4 + 0.0 * 2) / 6)
    assert math.isnan(gauc(torch.ones(3), torch.rand(3), torch.tensor([0, 1, 1])))


@settings(max_examples=40, deadline=None)
@given(data=st.lists(st.tuples(st.integers(0, 1), st.one_of(FEW_SCORES, ANY_SCORES), st.integers(0, 3),
                               st.integers(0, 4)), min_size=1, max_size=50))
def test_evaluation_report_per_scenario_and_macro(data):
    """Tiny scenarios, one-class scenarios (NaN, left out of the macro mean) and absent scenarios."""
    y = np.array([r[0] for r in data], dtype=np.float64)
    p = np.array([r[1] for r in data], dtype=np.float32)
    s = np.array([r[2] for r in data])
    g = np.array([r[3] for r in data])
    names = ["a", "b", "c", "d"]
    split = evaluation_report(torch.from_numpy(y)[:, None].float(), torch.from_numpy(p)[:, None], torch.from_numpy(s),
                              names, ["click"], users=torch.from_numpy(g))
    report = split["tasks"]["click"]  # one task: the same tasks form as several
    assert list(split["tasks"]) == ["click"] and same(split["macro_auc"], report["macro_auc"])
    assert same(split["overall"]["auc"], report["overall"]["auc"])
    p64 = p.astype(np.float64)
    assert same(report["overall"]["auc"], sk_auc(y, p64))
    assert same(report["overall"]["logloss"], sk_logloss(y, p64), 1e-6)
    assert same(report["overall"]["gauc"], sk_gauc(y, p64, g))
    present = [k for k in range(4) if (s == k).any()]
    assert list(report["scenarios"]) == [names[k] for k in present]
    per_scenario = []
    for k in present:
        m = s == k
        block = report["scenarios"][names[k]]
        assert block["rows"] == m.sum() and block["positives"] == y[m].sum()
        assert same(block["auc"], sk_auc(y[m], p64[m]))
        assert same(block["logloss"], sk_logloss(y[m], p64[m]), 1e-6)
        assert same(block["gauc"], sk_gauc(y[m], p64[m], g[m]))
        per_scenario.append(sk_auc(y[m], p64[m]))
    valid = [a for a in per_scenario if not math.isnan(a)]
    assert same(report["macro_auc"], float(np.mean(valid)) if valid else math.nan)


def test_evaluation_report_with_two_tasks_has_one_block_per_task():
    rng = np.random.default_rng(0)
    n = 400
    y = torch.from_numpy(rng.integers(0, 2, (n, 2))).float()
    p = torch.from_numpy(rng.random((n, 2))).float()
    s = torch.from_numpy(rng.integers(0, 3, n))
    truth = torch.from_numpy(rng.random((n, 2))).float()
    report = evaluation_report(y, p, s, ["x", "y", "z"], ["click", "conversion"], truth=truth)
    assert set(report["tasks"]) == {"click", "conversion"}
    for j, task in enumerate(["click", "conversion"]):
        block = report["tasks"][task]
        assert same(block["overall"]["auc"], sk_auc(y[:, j].numpy(), p[:, j].numpy()))
        assert same(block["overall"]["oracle_auc"], sk_auc(y[:, j].numpy(), truth[:, j].numpy()))
        for k, name in enumerate(["x", "y", "z"]):
            m = (s == k).numpy()
            assert same(block["scenarios"][name]["auc"], sk_auc(y[m, j].numpy(), p[m, j].numpy()))
    assert same(report["macro_auc"], np.mean([report["tasks"][t]["macro_auc"] for t in ("click", "conversion")]))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 300), tasks=st.integers(1, 3))
def test_the_epoch_monitor_report_has_the_full_reports_values(seed, n, tasks):
    """Validation reads `monitor_report` every epoch: the same macro AUC, AUC and logloss (means over tasks)
    as the full report, one-class and absent scenarios included."""
    rng = np.random.default_rng(seed)
    y = torch.from_numpy(rng.integers(0, 2, (n, tasks))).float()
    p = torch.from_numpy(rng.integers(0, 5, (n, tasks)) / 4).float()
    s = torch.from_numpy(rng.integers(0, 4, n))
    args = (y, p, s, ["a", "b", "c", "d"], [f"t{j}" for j in range(tasks)])
    full, light = evaluation_report(*args, users=s), monitor_report(*args, users=s)
    assert set(light) == {"tasks", "macro_auc", "overall"} and set(light["overall"]) == {"auc", "logloss"}
    for a, b in [(full["macro_auc"], light["macro_auc"]), (full["overall"]["auc"], light["overall"]["auc"]),
                 (full["overall"]["logloss"], light["overall"]["logloss"])]:
        assert same(a, b, 0.0)
    for task, block in light["tasks"].items():  # per-scenario AUCs (what tracking logs per epoch)
        full_block = full["tasks"][task]["scenarios"]
        assert set(block["scenarios"]) == set(full_block)
        for name, m in block["scenarios"].items():
            assert same(m["auc"], full_block[name]["auc"], 0.0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 400), scenarios=st.integers(1, 60),
       distinct=st.integers(1, 8), nan_truth=st.booleans())
def test_many_scenarios_in_one_pass_match_sklearn_per_scenario(seed, n, scenarios, distinct, nan_truth):
    """Many scenarios, most tiny, some empty, some of one class, heavy ties: every per-scenario figure is
    scikit-learn's on that scenario's rows; both macro means (unweighted, row-weighted) follow from them."""
    rng = np.random.default_rng(seed)
    s = np.minimum(rng.zipf(1.5, n) - 1, scenarios - 1)  # a long tail; the last ids mostly empty
    y = (rng.random(n) < rng.random(scenarios)[s]).astype(np.float64)  # some scenarios of one class
    p = rng.integers(0, distinct, n) / distinct
    g = rng.integers(0, 5, n)
    truth = rng.random(n)
    if nan_truth and n:
        truth[rng.integers(0, n)] = np.nan  # its scenario has no oracle AUC; the others keep theirs
    names = [f"s{k}" for k in range(scenarios)]
    report = evaluation_report(torch.from_numpy(y)[:, None], torch.from_numpy(p)[:, None], torch.from_numpy(s),
                               names, ["click"], users=torch.from_numpy(g),
                               truth=torch.from_numpy(truth)[:, None])["tasks"]["click"]
    present = [k for k in range(scenarios) if (s == k).any()]
    assert list(report["scenarios"]) == [names[k] for k in present]
    aucs, sizes = [], []
    for k in present:
        m = s == k
        block = report["scenarios"][names[k]]
        assert block["rows"] == m.sum() and block["positives"] == y[m].sum()
        assert same(block["auc"], sk_auc(y[m], p[m]))
        assert same(block["logloss"], sk_logloss(y[m], p[m]), 1e-9)
        assert same(block["gauc"], sk_gauc(y[m], p[m], g[m]))
        if np.isnan(truth[m]).any():  # an oracle wherever no true probability is missing
            assert "oracle_auc" not in block
        else:
            assert same(block["oracle_auc"], sk_auc(y[m], truth[m]))
        aucs.append(sk_auc(y[m], p[m]))
        sizes.append(m.sum())
    aucs, sizes = np.array(aucs), np.array(sizes)
    ok = ~np.isnan(aucs)
    assert same(report["macro_auc"], float(aucs[ok].mean()) if ok.any() else math.nan)
    assert same(report["weighted_macro_auc"],
                float((aucs[ok] * sizes[ok]).sum() / sizes[ok].sum()) if ok.any() else math.nan)


def test_a_scenario_with_a_missing_true_probability_has_no_oracle_auc_the_others_do():
    from msrec.train.metrics import task_report

    y = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    p = torch.tensor([0.2, 0.8, 0.3, 0.7, 0.6, 0.4])
    s = torch.tensor([0, 0, 1, 1, 2, 2])
    truth = torch.tensor([0.1, 0.9, float("nan"), 0.8, 0.9, 0.1])
    report = task_report(y, p, s, ["a", "b", "c"], truth=truth)
    assert "oracle_auc" not in report["overall"] and "oracle_macro_auc" not in report
    assert report["scenarios"]["a"]["oracle_auc"] == 1.0 and report["scenarios"]["c"]["oracle_auc"] == 0.0
    assert "oracle_auc" not in report["scenarios"]["b"]


def test_weighted_macro_auc_weights_each_scenario_by_its_rows():
    # scenario a: 4 rows, AUC 1; scenario b: 2 rows, AUC 0; scenario c: one class (left out of both means).
    y = torch.tensor([0, 0, 1, 1, 1, 0, 1, 1], dtype=torch.float32)[:, None]
    p = torch.tensor([0.1, 0.2, 0.8, 0.9, 0.1, 0.9, 0.5, 0.6])[:, None]
    s = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    report = evaluation_report(y, p, s, ["a", "b", "c"], ["click"])
    assert report["macro_auc"] == pytest.approx(0.5)
    assert report["weighted_macro_auc"] == pytest.approx(4 / 6)
    assert report["tasks"]["click"]["weighted_macro_auc"] == pytest.approx(4 / 6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 300), scenarios=st.integers(1, 30),
       distinct=st.integers(1, 6))
def test_bootstrap_replicates_of_all_scenarios_in_one_pass_equal_each_scenarios_own(seed, n, scenarios, distinct):
    """`replicate_metrics` scores every scenario from one sort; each scenario's replicates are those of
    `weighted_auc` / `weighted_logloss` on its own rows under the same weights (ties, one-class and absent
    scenarios included), and the row-weighted macro weights each scenario by its resampled rows."""
    from msrec.report.stats import CHUNK, replicate_metrics, weighted_auc, weighted_logloss

    rng = np.random.default_rng(seed)
    s = np.minimum(rng.zipf(1.6, n) - 1, scenarios - 1)
    y = (rng.random(n) < rng.random(scenarios)[s]).astype(np.float64)
    p = (rng.integers(0, distinct, n) / distinct).astype(np.float32)
    names = [f"s{k}" for k in range(scenarios)]
    got = replicate_metrics(y, p, s, names, 40, seed=3)
    w = np.random.default_rng(3).poisson(1.0, (min(CHUNK, 40), n)).astype(np.float32)  # the same draws
    sums = np.stack([w[:, s == k].sum(1) for k in range(scenarios)], 1)
    for k, name in enumerate(names):
        m = s == k
        if not m.any():
            assert np.isnan(got["auc"][name]).all() and np.isnan(got["logloss"][name]).all()
            continue
        np.testing.assert_allclose(got["auc"][name], weighted_auc(y[m], p[m], w[:, m]), rtol=1e-9, atol=1e-12)
        with np.errstate(all="ignore"):
            np.testing.assert_allclose(got["logloss"][name], weighted_logloss(y[m], p[m], w[:, m]), rtol=1e-9)
    np.testing.assert_allclose(got["auc"]["overall"], weighted_auc(y, p, w), rtol=1e-12)
    per = np.stack([got["auc"][name] for name in names], 1)
    ok = ~np.isnan(per)
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(got["auc"]["weighted_macro"],
                                   np.where(ok, per * sums, 0).sum(1) / np.where(ok, sums, 0).sum(1), rtol=1e-9)
    macro = [np.mean(row[~np.isnan(row)]) if (~np.isnan(row)).any() else np.nan for row in per]
    np.testing.assert_allclose(got["auc"]["macro"], macro, rtol=1e-12)


def _one_column_difference(observed, replicates, higher, seed):
    """The per-column paired difference as msrec computed it before the columns were batched (reference)."""
    k = len(observed)
    obs = np.asarray(observed, dtype=np.float64)
    reps = np.stack(replicates)
    b = reps.shape[1]
    rng = np.random.default_rng(seed)
    if k == 1:
        combined = reps[0]
    else:
        pick_seed, pick_rep = rng.integers(0, k, (b, k)), rng.integers(0, b, (b, k))
        combined = reps[pick_seed, pick_rep].mean(1)
    combined = combined[np.isfinite(combined)]
    if combined.size == 0 or not np.isfinite(obs).all():
        return (float(np.nanmean(obs)) if np.isfinite(obs).any() else math.nan, math.nan, math.nan, math.nan, 0)
    low, high = np.quantile(combined, [0.025, 0.975])
    p = min(1.0, 2 * min((combined <= 0).mean(), (combined >= 0).mean()))
    return (float(obs.mean()), float(low), float(high), float(p), int((obs > 0).sum() if higher else (obs < 0).sum()))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 4), columns=st.integers(1, 12), higher=st.booleans())
def test_paired_differences_of_all_columns_at_once_equal_each_columns_own(seed, k, columns, higher):
    from msrec.report.stats import paired_differences

    rng = np.random.default_rng(seed)
    observed = rng.normal(0, 0.01, (k, columns))
    reps = rng.normal(0.002, 0.01, (k, 50, columns))
    reps[rng.random(reps.shape) < 0.1] = np.nan  # replicates that drew one class
    reps[:, :, 0] = np.nan if columns > 2 else reps[:, :, 0]  # a column with no usable replicate
    if columns > 3:
        observed[0, 3] = np.nan  # a seed without the figure
    got = paired_differences(observed, reps, higher, seed=k)
    for c in range(columns):
        d = got[c]
        want = _one_column_difference(list(observed[:, c]), list(reps[:, :, c]), higher, k)
        for a, b in zip((d.delta, d.low, d.high, d.p_value, d.wins), want):
            assert same(float(a), float(b), 1e-12)


@settings(max_examples=60, deadline=None)
@given(data=st.lists(st.tuples(st.integers(0, 1), st.sampled_from([-3e38, -3.5, -1e-40, -0.0, 0.0, 1e-40, 2.0, 3e38]),
                               st.integers(0, 3)), min_size=1, max_size=60), dtype=st.sampled_from(["float32", "float64"]))
def test_segment_aucs_order_negative_signed_zero_and_extreme_scores_as_sklearn(data, dtype):
    """Scores of 32 bits are sorted by their bits made order-preserving (negative floats, -0.0 tied with 0.0,
    denormals, the largest floats); float64 scores by two stable sorts: both as scikit-learn on each group's rows."""
    from msrec.train.metrics import segment_aucs

    y = np.array([r[0] for r in data], dtype=np.float64)
    p = np.array([r[1] for r in data], dtype=dtype)
    g = np.array([r[2] for r in data])
    keys, aucs, sizes = segment_aucs(torch.from_numpy(y), torch.from_numpy(p), torch.from_numpy(g))
    assert keys.tolist() == sorted(set(g.tolist()))
    for k, a, n in zip(keys.tolist(), aucs.tolist(), sizes.tolist()):
        m = g == k
        assert n == m.sum() and same(a, sk_auc(y[m], p[m].astype(np.float64)))
