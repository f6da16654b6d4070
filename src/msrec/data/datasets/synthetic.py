"""A multi-scenario click (and conversion) generator with a known truth.

Each row: a user and an item drawn with Zipf popularity, a scenario drawn with unequal shares. The click
logit is

    b_s + shared(u, i) + a_s * specific_s(u, i) + cat0[c] + cat_s[c] + group_s[g] + w_s * price + 0.3 * activity

- `shared(u, i) = <p_u, q_i>`: a preference every scenario agrees on;
- `specific_s(u, i) = p_u^T M_s q_i`: a scenario's own preference, strongest in the smallest scenario
  (`a_s` grows as the share shrinks, scaled by `heterogeneity`);
- scenario-specific feature importance (category and user-group effects, price sensitivity) and base rates.

With two tasks, a conversion happens only after a click: `p_conversion = p_click * p_cvr`, where the
conversion logit reuses the click preference (correlated tasks) plus a price effect of its own.

The true probabilities are returned beside the data (`p_<label>`), never as features, so that reports
can show the oracle AUC per scenario. Everything is whole-array numpy; 10 million rows take seconds.

Many scenarios. `share_zipf: a` gives scenario k a share proportional to 1 / (k + 1)^a (a long tail);
the presets `long_tail_100` and `long_tail_1000` are 100 and 1,000 scenarios with a = 1.

Hierarchical scenarios. `levels: [n_1, n_2, ...]` makes each scenario a combination of one value per level
(e.g. 12 countries x 5 placements), written as one column per level (`level_names`, default `country`,
`placement`, ...) beside the combined `scenario` column (`c3/p1`). The truth is composed per level: every
scenario effect above (base rate, specific matrix, category, group and price effects, conversion
effects) is the sum of one part per level value plus `interaction` times a part of the combination's own,
scaled so that the total has the flat generator's spread:

    effect(c, p) = (effect_country[c] + effect_placement[p] + interaction * effect_own[c, p]) / sqrt(2 + interaction^2)

so a combination with few rows shares most of its truth with its country and its placement. A level's
values have Zipf shares (exponent `share_zipf`, default 1) and a combination's share is the product of its
values' shares. The preset `countries_x_placements` is 12 x 5 with interaction 0.3.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from msrec.data.datasets import DatasetOptions, Loaded, register

PRESETS: dict[str, dict] = {
    "long_tail_100": {"scenarios": 100, "share_zipf": 1.0},
    "long_tail_1000": {"scenarios": 1000, "share_zipf": 1.0},
    "countries_x_placements": {"levels": [12, 5], "share_zipf": 1.0, "interaction": 0.3},
}
LEVEL_NAMES = ("country", "placement", "tier", "mode")


class SyntheticOptions(DatasetOptions):
    rows: int = Field(300_000, ge=10)
    """Rows generated."""
    preset: Literal["long_tail_100", "long_tail_1000", "countries_x_placements"] | None = None
    """Named scenario layout: 100 or 1,000 scenarios with Zipf shares, or 12 countries x 5 placements."""
    scenarios: int = Field(3, ge=1, le=1000)
    """Number of scenarios (s0, s1, ...)."""
    shares: list[float] | None = None
    """Each scenario's share of the rows (normalised); default 0.6/0.3/0.1 for three, halving otherwise."""
    share_zipf: float | None = Field(None, gt=0)
    """Shares proportional to 1 / (k + 1)^a with this exponent a (instead of `shares`' default)."""
    levels: list[int] | None = Field(None, min_length=2, max_length=len(LEVEL_NAMES))
    """Hierarchical scenarios: values per level (e.g. [12, 5]); the scenarios are their combinations."""
    level_names: list[str] | None = None
    """Column name of each level (default country, placement, tier, mode)."""
    interaction: float = Field(0.3, ge=0)
    """Hierarchical: weight of each combination's own effect beside its levels' effects."""
    users: int = Field(5_000, ge=1)
    """Distinct users."""
    items: int = Field(2_000, ge=1)
    """Distinct items."""
    tasks: int = Field(1, ge=1, le=2)
    """1: click; 2: click and conversion (a conversion only after a click)."""
    latent_dim: int = Field(8, ge=1)
    """Size of the true user and item preference vectors."""
    heterogeneity: float = Field(1.0, ge=0)
    """How much scenarios differ (0: one shared preference)."""
    zipf: float = Field(1.05, gt=0)
    """Popularity skew of users and items."""
    seed: int = 0
    """Seed of the world (users, items, scenario effects) and, without row_seed, of the rows."""
    row_seed: int | None = None
    """Seed of the rows alone: new rows from the same world (e.g. a large dataset written file by file)."""

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data):
        """A preset's options, under any option the config gives itself."""
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            data = {**PRESETS[data["preset"]], **data}
        return data

    @model_validator(mode="after")
    def _shares(self) -> SyntheticOptions:
        if self.levels is not None:
            self.scenarios = int(np.prod(self.levels))
            self.level_names = self.level_names or list(LEVEL_NAMES[: len(self.levels)])
            if len(self.level_names) != len(self.levels):
                raise ValueError(f"level_names: need {len(self.levels)} names, got {self.level_names}")
            if self.shares is None:
                per_level = [zipf_shares(n, self.share_zipf or 1.0) for n in self.levels]
                self.shares = list(np.prod(np.meshgrid(*per_level, indexing="ij"), 0).ravel())
        if self.shares is None and self.share_zipf is not None:
            self.shares = list(zipf_shares(self.scenarios, self.share_zipf))
        if self.shares is None:
            self.shares = [0.6, 0.3, 0.1] if self.scenarios == 3 else list(0.5 ** np.arange(self.scenarios))
        if len(self.shares) != self.scenarios or min(self.shares) <= 0:
            raise ValueError(f"shares: need {self.scenarios} positive values, got {self.shares}")
        total = sum(self.shares)
        self.shares = [s / total for s in self.shares]
        return self


LABELS = ("click", "conversion")


def zipf_shares(n: int, a: float) -> np.ndarray:
    """Shares proportional to 1 / (k + 1)^a, k = 0..n-1."""
    p = 1.0 / np.arange(1, n + 1) ** a
    return p / p.sum()


def _zipf_probs(n: int, a: float, rng: np.random.Generator) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** a
    return rng.permutation(p / p.sum())


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def generate(options: SyntheticOptions | None = None, **kwargs) -> pa.Table:
    o = options or SyntheticOptions(**kwargs)
    rng = np.random.default_rng(o.seed)
    n, S, k = o.rows, o.scenarios, o.latent_dim
    n_groups, n_cats = 8, 16

    # Entities and their side features.
    user_vec = rng.normal(0, 1 / np.sqrt(k), (o.users, k)).astype(np.float32) * 1.6
    item_vec = rng.normal(0, 1 / np.sqrt(k), (o.items, k)).astype(np.float32) * 1.6
    user_group = rng.integers(0, n_groups, o.users)
    user_activity = rng.lognormal(0, 0.5, o.users).astype(np.float32)
    item_category = rng.integers(0, n_cats, o.items)
    item_price = rng.gamma(2.0, 10.0, o.items).astype(np.float32)

    # Scenarios: base rate, specific preference strength (largest where the scenario is smallest),
    # feature importance of their own.
    shares = np.asarray(o.shares)
    base = rng.normal(-1.2, 0.5, S)
    strength = o.heterogeneity * (0.6 + 1.4 * (1 - shares / shares.max()))
    specific_matrix = rng.normal(0, 1 / np.sqrt(k), (S, k, k)).astype(np.float32) * 1.6
    cat_shared = rng.normal(0, 0.5, n_cats)
    cat_specific = rng.normal(0, 0.8 * o.heterogeneity, (S, n_cats))
    group_specific = rng.normal(0, 0.6 * o.heterogeneity, (S, n_groups))
    price_slope = rng.normal(0, 0.6 * o.heterogeneity, S)
    cvr_cat = rng.normal(0, 0.6, (S, n_cats))
    level_ids = None
    if o.levels is not None:  # every effect: one part per level value plus the combination's own (above)
        level_ids = np.unravel_index(np.arange(S), o.levels)  # combination s -> its value of each level
        scale = 1 / np.sqrt(len(o.levels) + o.interaction ** 2)
        own = [base + 1.2, specific_matrix, cat_specific, group_specific, price_slope, cvr_cat]
        composed = [o.interaction * x for x in own]
        for n_values, ids in zip(o.levels, level_ids, strict=True):
            parts = [rng.normal(0, 0.5, n_values),
                     rng.normal(0, 1 / np.sqrt(k), (n_values, k, k)).astype(np.float32) * 1.6,
                     rng.normal(0, 0.8 * o.heterogeneity, (n_values, n_cats)),
                     rng.normal(0, 0.6 * o.heterogeneity, (n_values, n_groups)),
                     rng.normal(0, 0.6 * o.heterogeneity, n_values),
                     rng.normal(0, 0.6, (n_values, n_cats))]
            composed = [c + part[ids] for c, part in zip(composed, parts, strict=True)]
        base, specific_matrix, cat_specific, group_specific, price_slope, cvr_cat = [x * scale for x in composed]
        base = base - 1.2
        specific_matrix = specific_matrix.astype(np.float32)

    # Rows: from their own random stream when `row_seed` is set, so that chunks of one world (same users,
    # items and scenarios) can be generated separately, e.g. to write a large dataset file by file.
    rows_rng = rng if o.row_seed is None else np.random.default_rng([o.seed, o.row_seed])
    scenario = rows_rng.choice(S, n, p=shares)
    user = rows_rng.choice(o.users, n, p=_zipf_probs(o.users, o.zipf, rng))
    item = rows_rng.choice(o.items, n, p=_zipf_probs(o.items, o.zipf, rng))
    u, i = user_vec[user], item_vec[item]
    shared = np.einsum("nk,nk->n", u, i)
    specific = np.empty(n, dtype=np.float32)
    for s in range(S):  # one matrix product per scenario, never per row
        rows = np.flatnonzero(scenario == s)
        specific[rows] = np.einsum("nk,nk->n", u[rows] @ specific_matrix[s], i[rows])
    cat, grp = item_category[item], user_group[user]
    price = (item_price[item] - 20.0) / 14.0
    activity = np.log(user_activity[user])
    logit = (base[scenario] + shared + strength[scenario] * specific + cat_shared[cat]
             + cat_specific[scenario, cat] + group_specific[scenario, grp] + price_slope[scenario] * price
             + 0.3 * activity)
    p_click = _sigmoid(logit)
    click = rows_rng.random(n) < p_click

    if level_ids is None:
        names = pa.array([f"s{s}" for s in range(S)])
        level_columns = {}
    else:
        values = [[f"{name[0]}{v}" for v in range(n)] for name, n in zip(o.level_names, o.levels, strict=True)]
        per_level = [[values[l][i] for i in ids] for l, ids in enumerate(level_ids)]  # per combination
        names = pa.array(["/".join(parts) for parts in zip(*per_level, strict=True)])
        level_columns = {name: pa.array(column).take(pa.array(scenario))
                         for name, column in zip(o.level_names, per_level, strict=True)}
    columns = {
        "user_id": user.astype(np.int64),
        "item_id": item.astype(np.int64),
        "user_group": grp.astype(np.int64),
        "item_category": cat.astype(np.int64),
        "scenario": names.take(pa.array(scenario)),
        **level_columns,
        "user_activity": user_activity[user],
        "item_price": item_price[item],
        "click": click.astype(np.int8),
        "p_click": p_click.astype(np.float32),
    }
    if o.tasks == 2:
        p_cvr = _sigmoid(-1.0 + 0.8 * shared + cvr_cat[scenario, cat] - 0.4 * price)
        columns["conversion"] = (click & (rows_rng.random(n) < p_cvr)).astype(np.int8)
        columns["p_conversion"] = (p_click * p_cvr).astype(np.float32)
    return pa.table(columns)


def defaults(options: SyntheticOptions) -> dict:
    labels = list(LABELS[: options.tasks])
    return {
        "sparse": ["user_id", "item_id", "user_group", "item_category"],
        "dense": ["user_activity", "item_price"],
        "lists": {},
        "scenario": "scenario",
        "labels": labels,
        "user": "user_id",
        "truth": {label: f"p_{label}" for label in labels},
    }


@register("synthetic", "Generated multi-scenario clicks (and conversions) with a known truth", SyntheticOptions)
def load(path: str | None, options: SyntheticOptions) -> Loaded:
    return {"all": generate(options)}, defaults(options)
