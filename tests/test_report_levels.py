"""The benchmark report's per-level tables carry each level value's difference from the reference with its paired
bootstrap interval, computed over the rows of that value (a combination fallen back from a level counts for
none of its values); runs stored without level ids get the AUC tables only."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from msrec.bench.store import RunRecord
from msrec.report.tables import level_differences, level_tables
from msrec.schema import ScenarioLevels
from msrec.train.metrics import evaluation_report

NAMES = ["DE/*", "DE/feed", "US/feed", "US/top"]
LEVELS = ScenarioLevels(["country", "placement"], [["DE", "US"], ["feed", "top"]], [[1, 0], [1, 1], [2, 1], [2, 2]])


def records(tmp_path, with_levels: bool = True) -> list[RunRecord]:
    """`ref` scores at random; `better` scores the same rows the same but those of country US, which it ranks
    by their labels."""
    rng = np.random.default_rng(0)
    n = 2000
    scenario = rng.integers(0, 4, n)
    labels = rng.integers(0, 2, (n, 1)).astype(np.float32)
    out = []
    for seed in (1, 2):
        ref = rng.random((n, 1)).astype(np.float32)
        us = (scenario >= 2)[:, None]
        better = np.where(us, 0.5 * labels + 0.7 * rng.random((n, 1)), ref).astype(np.float32)
        for label, scores in (("ref", ref), ("better", better)):
            path = tmp_path / f"{label}--seed{seed}.npz"
            arrays = {"scores": scores, "labels": labels.astype(np.int8), "scenario": scenario.astype(np.int32)}
            if with_levels:
                arrays["levels"] = np.asarray(LEVELS.ids, dtype=np.int32)
            np.savez(path, **arrays)
            metrics = evaluation_report(torch.from_numpy(labels), torch.from_numpy(scores), torch.from_numpy(scenario),
                                        NAMES, ["click"], levels=LEVELS)
            out.append(RunRecord(f"{label}--seed{seed}", label, "dnn", seed, ["click"], NAMES, "test",
                                 {"test": metrics}, 1.0, 1.0, path))
    return out


GRID = SimpleNamespace(labels=["ref", "better"], spec=SimpleNamespace(reference="ref", bootstrap=200))


def test_each_level_value_gets_its_difference_and_interval_over_its_own_rows(tmp_path):
    runs = records(tmp_path)
    country = level_differences(GRID, runs, "click", 0, "country")["better"]
    assert country["DE"].delta == 0 and country["DE"].low == 0 == country["DE"].high  # DE's rows scored alike
    assert country["US"].low > 0.1 and country["US"].significant
    blocks = {r.id: r.metrics["test"]["tasks"]["click"]["levels"]["country"] for r in runs}
    observed = np.mean([blocks[f"better--seed{s}"]["scenarios"]["US"]["auc"]
                        - blocks[f"ref--seed{s}"]["scenarios"]["US"]["auc"] for s in (1, 2)])
    assert np.isclose(country["US"].delta, observed)
    placement = level_differences(GRID, runs, "click", 1, "placement")["better"]
    assert placement["top"].low > 0.1  # top is US only
    assert 0 < placement["feed"].delta < country["US"].delta  # feed holds US/feed and DE/feed
    # DE/* has no placement: its rows, scored alike, are not among feed's (they would dilute it further)
    titles = [t.title for t in level_tables(GRID, runs, "click", False)]
    assert titles == ["Test AUC per country", "Difference from ref (AUC) per country",
                      "Test AUC per placement", "Difference from ref (AUC) per placement"]


def test_runs_stored_without_level_ids_get_the_auc_tables_only(tmp_path):
    runs = records(tmp_path, with_levels=False)
    assert level_differences(GRID, runs, "click", 0, "country") == {}
    assert [t.title for t in level_tables(GRID, runs, "click", False)] == ["Test AUC per country",
                                                                           "Test AUC per placement"]
