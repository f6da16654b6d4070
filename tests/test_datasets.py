"""Built-in datasets: the synthetic generator and the MovieLens readers of GroupLens's own layouts."""

from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from msrec.api import as_config, prepare_data
from msrec.data.datasets import movielens, synthetic
from msrec.errors import MsrecError

# ---------------------------------------------------------------- synthetic


def test_synthetic_is_seeded():
    a = synthetic.generate(rows=5000, seed=1)
    assert a.equals(synthetic.generate(rows=5000, seed=1))
    assert not a.equals(synthetic.generate(rows=5000, seed=2))


def test_synthetic_shapes_shares_and_truth():
    t = synthetic.generate(rows=60_000, seed=0)
    assert t.num_rows == 60_000
    assert set(t.column_names) >= {"user_id", "item_id", "scenario", "click", "p_click"}
    counts = dict(zip(*[c.to_pylist() for c in pc.value_counts(t["scenario"]).flatten()]))
    shares = [counts[f"s{k}"] / t.num_rows for k in range(3)]
    assert shares == pytest.approx([0.6, 0.3, 0.1], abs=0.01)
    p = t["p_click"].to_numpy()
    y = t["click"].to_numpy()
    assert ((p >= 0) & (p <= 1)).all()
    assert set(np.unique(y)) == {0, 1}
    assert abs(y.mean() - p.mean()) < 0.01  # labels drawn from the stated probabilities
    for k in range(3):  # the truth is informative in every scenario
        m = (t["scenario"].to_numpy(zero_copy_only=False) == f"s{k}")
        assert roc_auc_score(y[m], p[m]) > 0.7


def test_synthetic_truth_is_never_a_feature():
    cfg = as_config({"data": {"dataset": "synthetic", "options": {"rows": 2000}}})
    data = prepare_data(cfg)
    schema = data.encoder.schema
    features = schema.feature_columns()
    assert "p_click" not in features and "click" not in features
    assert schema.truth == {"click": "p_click"}
    assert data.test.truth is not None  # kept beside the data, for the oracle row
    assert data.encoder.spec().dense_dim == 2 * len(schema.dense)


def test_synthetic_two_tasks_conversion_follows_click():
    t = synthetic.generate(rows=20_000, tasks=2, seed=4)
    click, conv = t["click"].to_numpy(), t["conversion"].to_numpy()
    assert (conv <= click).all()
    assert 0 < conv.sum() < click.sum()
    assert (t["p_conversion"].to_numpy() <= t["p_click"].to_numpy() + 1e-7).all()
    assert synthetic.defaults(synthetic.SyntheticOptions(tasks=2))["labels"] == ["click", "conversion"]


def test_synthetic_options_are_validated():
    with pytest.raises(MsrecError, match=r"data.options: shares: need 2 positive values"):
        prepare_data(as_config({"data": {"dataset": "synthetic", "options": {"scenarios": 2, "shares": [1.0]}}}))
    with pytest.raises(MsrecError, match=r"data.options: unknown option `colour` for dataset synthetic \(options: rows, "):
        prepare_data(as_config({"data": {"dataset": "synthetic", "options": {"colour": 1}}}))


# --------------------------------------------------------------- MovieLens


def test_movielens_100k_from_the_grouplens_layout(ml100k_dir, shared_data):
    assert sorted(p.name for p in ml100k_dir.iterdir()) == ["u.data", "u.item", "u.user"]
    t = movielens.load_100k(ml100k_dir)
    src = shared_data / "movielens-100k"
    ratings = pq.read_table(src / "MovieLens100k_data.parquet.brotli")
    users = pq.read_table(src / "MovieLens100k_users.parquet.brotli")
    assert t.num_rows == 100_000
    assert t["user_id"].to_pylist() == ratings["user_id"].to_pylist()
    assert t["movie_id"].to_pylist() == ratings["movie_id"].to_pylist()
    assert np.array_equal(t["label"].to_numpy(), ratings["rating"].to_numpy() > 3)
    age = dict(zip(users["user_id"].to_pylist(), users["age"].to_pylist()))
    expected = [0 if age[u] < 25 else 1 if age[u] < 35 else 2 for u in ratings["user_id"].to_pylist()]
    assert t["scenario"].to_pylist() == expected
    zips = dict(zip(users["user_id"].to_pylist(), users["zip_code"].to_pylist()))
    assert t["zip"].to_pylist()[:1000] == [zips[u] for u in ratings["user_id"].to_pylist()[:1000]]
    assert set(movielens.DEFAULTS["sparse"]) <= set(t.column_names)


def test_movielens_100k_first_genre(ml100k_dir, shared_data):
    t = movielens.load_100k(ml100k_dir)
    items = pq.read_table(shared_data / "movielens-100k" / "MovieLens100k_items.parquet.brotli")
    genre = {}
    for row in items.to_pylist():
        flagged = [g for g in movielens.GENRES_100K if row[g]]
        genre[row["movie_id"]] = flagged[0] if flagged else "unknown"
    assert t["genre"].to_pylist()[:2000] == [genre[m] for m in t["movie_id"].to_pylist()[:2000]]


def test_movielens_1m_reader_with_age_code_groups(shared_data):
    folder = shared_data / "movielens-1m-sample"
    t = movielens.load_1m(folder)
    assert t.num_rows == 100_000
    users = {}
    for line in (folder / "users.dat").read_text(encoding="latin-1").splitlines():
        uid, _gender, code, _occupation, _zip = line.split("::")
        users[int(uid)] = int(code)
    ratings = [line.split("::") for line in (folder / "ratings.dat").read_text().splitlines()]
    group = {1: 0, 18: 0, 25: 1, 35: 2, 45: 2, 50: 2, 56: 2}
    assert t["scenario"].to_pylist() == [group[users[int(r[0])]] for r in ratings]
    assert t["label"].to_pylist() == [int(int(r[2]) > 3) for r in ratings]
    movies = {}
    for line in (folder / "movies.dat").read_text(encoding="latin-1").splitlines():
        mid, _title, genres = line.split("::")
        movies[int(mid)] = genres.split("|")[0]
    assert t["genre"].to_pylist() == [movies[int(r[1])] for r in ratings]


def test_movielens_as_a_builtin_dataset_splits_80_10_10(ml100k_dir):
    data = prepare_data(as_config({"data": {"dataset": "movielens-100k", "path": str(ml100k_dir)}}))
    assert [len(getattr(data, k)) for k in ("train", "val", "test")] == [80_000, 10_000, 10_000]
    assert data.encoder.scenario_names == ["0", "1", "2"]
    assert data.encoder.schema.dense == ["age"]


def _ratings_per_user(users: list[int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for u in users:
        counts[u] = counts.get(u, 0) + 1
    return counts


def test_movielens_100k_activity_tiers_by_ratings_per_user_over_the_whole_file(ml100k_dir, shared_data):
    t = movielens.load_100k(ml100k_dir, scenario="activity")
    users = pq.read_table(shared_data / "movielens-100k" / "MovieLens100k_data.parquet.brotli")["user_id"].to_pylist()
    n = _ratings_per_user(users)
    assert t["scenario"].to_pylist() == [0 if n[u] <= 27 else 1 if n[u] <= 128 else 2 for u in users]
    shares = np.bincount(t["scenario"].to_numpy()) / t.num_rows
    np.testing.assert_allclose(shares, [0.0396, 0.3085, 0.6519], atol=1e-4)  # ~ML-1M's 4% / 29% / 67%


def test_movielens_1m_activity_tiers_and_bounds(shared_data):
    folder = shared_data / "movielens-1m-sample"
    users = [int(line.split("::")[0]) for line in (folder / "ratings.dat").read_text().splitlines()]
    n = _ratings_per_user(users)
    t = movielens.load_1m(folder, scenario="activity")  # ML-1M's tiers: <= 50, 51-200, > 200
    assert t["scenario"].to_pylist() == [0 if n[u] <= 50 else 1 if n[u] <= 200 else 2 for u in users]
    # The 10% sample: a user's count is about a tenth of the full one, so the bounds scale to [5, 20].
    data = prepare_data(as_config({"data": {"dataset": "movielens-1m", "path": str(folder),
                                            "options": {"scenario": "activity", "activity_bounds": [5, 20]}}}))
    assert data.encoder.scenario_names == ["0", "1", "2"]
    tiers = movielens.load_1m(folder, "activity", [5, 20])["scenario"].to_numpy()
    assert tiers.tolist() == [0 if n[u] <= 5 else 1 if n[u] <= 20 else 2 for u in users]
    np.testing.assert_allclose(np.bincount(tiers) / len(tiers), [0.0608, 0.2834, 0.6558], atol=1e-4)


@pytest.mark.parametrize("kind", ["gender", "occupation"])
def test_movielens_user_attribute_scenarios(kind, ml100k_dir, shared_data):
    t = movielens.load_100k(ml100k_dir, scenario=kind)
    users = pq.read_table(shared_data / "movielens-100k" / "MovieLens100k_users.parquet.brotli")
    value = dict(zip(users["user_id"].to_pylist(), users[kind].to_pylist()))
    assert t["scenario"].to_pylist() == [value[u] for u in t["user_id"].to_pylist()]
    assert t["scenario"].equals(t[kind])
    folder = shared_data / "movielens-1m-sample"
    column = {"gender": 1, "occupation": 3}[kind]
    value = {int(f[0]): f[column] for f in (line.split("::") for line in (folder / "users.dat").read_text(
        encoding="latin-1").splitlines())}
    t = movielens.load_1m(folder, scenario=kind)
    assert t["scenario"].to_pylist() == [value[u] for u in t["user_id"].to_pylist()]
    assert len(set(t["scenario"].to_pylist())) == {"gender": 2, "occupation": 21}[kind]


@pytest.mark.parametrize("options, message", [
    ({"scenario": "zip"}, r"data\.options\.scenario: .*'age', 'activity', 'gender' or 'occupation'"),
    ({"scenario": "activity", "activity_bounds": [200, 50]}, r"data\.options\.activity_bounds: .*low < mid"),
    ({"activity_bounds": [50]}, r"data\.options\.activity_bounds: .*at least 2"),
    ({"scenarios": [0]}, r"unknown option `scenarios` for dataset movielens-1m \(options: scenario, activity_bounds\)"),
])
def test_movielens_options_are_checked(options, message):
    with pytest.raises(MsrecError, match=message):
        prepare_data(as_config({"data": {"dataset": "movielens-1m", "path": "/nowhere", "options": options}}))


def test_missing_dataset_offline_fails_with_a_clear_message(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(MsrecError, match=r"movielens-100k: .*lacks u\.data.*download.*failed") as err:
        movielens.load_100k(tmp_path / "nothing-here")
    assert "\n" not in str(err.value) and str(tmp_path / "nothing-here") in str(err.value)
    with pytest.raises(MsrecError, match="movielens-1m"):
        movielens.load_1m(tmp_path / "nothing-here")


def test_download_with_a_wrong_checksum_is_refused(tmp_path, monkeypatch):
    class FakeResponse:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return b"not the archive"

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: FakeResponse())
    with pytest.raises(MsrecError, match="MD5"):
        movielens.load_100k(tmp_path / "ml")
    assert not (tmp_path / "ml" / "u.data").exists()


def test_synthetic_row_seed_draws_new_rows_from_the_same_world():
    import numpy as np

    from msrec.data.datasets import synthetic

    a = synthetic.generate(rows=5_000, row_seed=1)
    b = synthetic.generate(rows=5_000, row_seed=2)
    assert a["user_id"].to_pylist() != b["user_id"].to_pylist()
    # Same world: a user's side features are the same in both chunks.
    ua = dict(zip(a["user_id"].to_pylist(), a["user_activity"].to_pylist()))
    ub = dict(zip(b["user_id"].to_pylist(), b["user_activity"].to_pylist()))
    common = set(ua) & set(ub)
    assert len(common) > 100 and all(ua[u] == ub[u] for u in common)
    assert np.array_equal(synthetic.generate(rows=500)["click"].to_numpy(),
                          synthetic.generate(rows=500, row_seed=None)["click"].to_numpy())


# ---------------------------------------------------------------- synthetic: many scenarios, levels


def scenario_shares(t) -> dict:
    counts = dict(zip(*[c.to_pylist() for c in pc.value_counts(t["scenario"]).flatten()]))
    return {k: v / t.num_rows for k, v in counts.items()}


@pytest.mark.parametrize(("preset", "S"), [("long_tail_100", 100), ("long_tail_1000", 1000)])
def test_long_tail_presets_have_zipf_shares(preset, S):
    options = synthetic.SyntheticOptions(preset=preset, rows=200_000)
    assert options.scenarios == S
    assert options.shares[0] / options.shares[9] == pytest.approx(10.0)  # share of scenario k ~ 1 / (k + 1)
    shares = scenario_shares(synthetic.generate(options))
    assert shares["s0"] == pytest.approx(options.shares[0], rel=0.05)
    assert shares["s9"] == pytest.approx(options.shares[9], rel=0.15)
    assert len(shares) > 0.9 * S if S == 100 else len(shares) > 800  # the tail is there


def interaction_contrast(t, levels: list[int]) -> float:
    """Mean |m[c,p] - m[c,p'] - m[c',p] + m[c',p']| of the mean true logit per (country, placement): zero
    when the scenario effects are a country part plus a placement part."""
    p = t["p_click"].to_numpy().astype(np.float64)
    logit = np.log(p / (1 - p))
    c = np.array([int(v[1:]) for v in t["country"].to_pylist()])
    q = np.array([int(v[1:]) for v in t["placement"].to_pylist()])
    m = np.zeros(levels)
    for i in range(levels[0]):
        for j in range(levels[1]):
            m[i, j] = logit[(c == i) & (q == j)].mean()
    contrast = m[:, None, :, None] - m[:, None, None, :] - m[None, :, :, None] + m[None, :, None, :]
    return float(np.abs(contrast).mean())


def test_hierarchy_preset_has_a_column_per_level_and_the_combined_scenario():
    t = synthetic.generate(preset="countries_x_placements", rows=30_000)
    assert {"country", "placement", "scenario"} <= set(t.column_names)
    scenario, country, placement = (t[c].to_pylist() for c in ("scenario", "country", "placement"))
    assert all(s == f"{a}/{b}" for s, a, b in zip(scenario, country, placement, strict=True))
    assert len(set(country)) == 12 and len(set(placement)) == 5 and len(set(scenario)) == 60
    defaults = synthetic.defaults(synthetic.SyntheticOptions(preset="countries_x_placements"))
    assert defaults["scenario"] == "scenario"


def test_hierarchy_truth_is_a_part_per_level_plus_the_combinations_own():
    additive = synthetic.generate(levels=[4, 3], interaction=0.0, rows=120_000, share_zipf=0.3, seed=1)
    own = synthetic.generate(levels=[4, 3], interaction=3.0, rows=120_000, share_zipf=0.3, seed=1)
    assert interaction_contrast(additive, [4, 3]) < 0.05
    assert interaction_contrast(own, [4, 3]) > 0.3
