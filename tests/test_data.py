"""Tables, batches, seeded splits and the config file."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from msrec.config import load_config, parse_config
from msrec.data.prepare import load_splits, split_rows
from msrec.data.table import TensorTable
from msrec.errors import MsrecError


def table(n: int) -> TensorTable:
    """Row i carries i in every tensor, so a batch tells which rows it holds."""
    i = torch.arange(n)
    return TensorTable(sparse=torch.stack([i, i], 1).int(), dense=i[:, None].float(), scenario=i % 3,
                       lists=[torch.stack([i, i, i], 1)], labels=(i % 2)[:, None].float())


def rows_of(batch) -> list[int]:
    return batch.sparse[:, 0].tolist()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), batch_size=st.integers(1, 64), seed=st.integers(0, 10**6))
def test_shuffled_batches_cover_every_row_once_and_stay_aligned(n, batch_size, seed):
    t = table(n)
    seen = []
    for batch in t.batches(batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)):
        assert len(batch) <= batch_size
        r = batch.sparse[:, 0].long()
        assert torch.equal(batch.sparse[:, 1].long(), r) and torch.equal(batch.dense[:, 0].long(), r)
        assert torch.equal(batch.scenario, r % 3) and torch.equal(batch.lists[0][:, 2], r)
        assert torch.equal(batch.labels[:, 0].long(), r % 2)
        seen += r.tolist()
    assert sorted(seen) == list(range(n))


def test_batches_are_reproducible_from_the_seed_and_differ_across_seeds():
    t = table(1000)

    def order(seed):
        return [r for b in t.batches(128, shuffle=True, generator=torch.Generator().manual_seed(seed)) for r in rows_of(b)]

    assert order(5) == order(5)
    assert order(5) != order(6)
    assert order(5) != list(range(1000))


def test_unshuffled_batches_keep_row_order_and_drop_last():
    t = table(10)
    assert [rows_of(b) for b in t.batches(4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [rows_of(b) for b in t.batches(4, drop_last=True)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_subset_and_concat_round_trip():
    t = table(20)
    rows = torch.tensor([3, 1, 7])
    part = t.subset(rows)
    assert rows_of(part.batch(slice(0, 3))) == [3, 1, 7]
    whole = TensorTable.concat([t.subset(torch.arange(0, 8)), t.subset(torch.arange(8, 20))])
    assert torch.equal(whole.sparse, t.sparse) and torch.equal(whole.lists[0], t.lists[0])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 2000), seed=st.integers(0, 10**6))
def test_split_rows_is_a_seeded_partition(n, seed):
    parts = split_rows(n, (0.8, 0.1, 0.1), seed)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(n))
    assert [len(p) for p in parts] == [round(0.8 * n), round(0.9 * n) - round(0.8 * n), n - round(0.9 * n)]
    assert all((np.diff(p) > 0).all() for p in parts)  # each part keeps the file's row order
    again = split_rows(n, (0.8, 0.1, 0.1), seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_load_splits_from_one_file_is_seeded_80_10_10(synthetic_config):
    cfg = parse_config(synthetic_config(data={"split": [0.8, 0.1, 0.1]}))
    a, b = load_splits(cfg.data, seed=3), load_splits(cfg.data, seed=3)
    assert [a.tables[k].num_rows for k in ("train", "val", "test")] == [2400, 300, 300]
    assert all(a.tables[k].equals(b.tables[k]) for k in a.tables)
    c = load_splits(cfg.data, seed=4)
    assert not a.tables["test"].equals(c.tables["test"])


def test_a_scenario_only_outside_the_training_split_names_the_file_row(tmp_path):
    n = 50
    t = pa.table({"u": list(range(n)), "scenario": ["a"] * (n - 1) + ["rare"], "label": [0, 1] * (n // 2)})
    path = tmp_path / "d.csv"
    import pyarrow.csv as pacsv

    pacsv.write_csv(t, path)
    for seed in range(30):  # find a seed whose split puts the one "rare" row outside training
        cfg = parse_config({"data": {"train": str(path), "sparse": ["u"], "scenario": "scenario",
                                     "labels": ["label"], "split_seed": seed}})
        try:
            load_splits(cfg.data, seed=0)
        except MsrecError as err:
            assert "row 50" in str(err) and "'rare'" in str(err) and "training split" in str(err)
            return
    pytest.fail("no seed put the rare row outside the training split")


# ------------------------------------------------------------------ config


def test_unknown_or_misspelt_config_keys_are_named(tmp_path):
    for section, key in [("train", "batch_sise"), ("data", "sparce"), ("", "modle")]:
        raw = {"data": {"dataset": "synthetic"}}
        if section:
            raw.setdefault(section, {})[key] = 1
        else:
            raw[key] = {}
        with pytest.raises(MsrecError, match=rf"unknown key `{(section + '.') if section else ''}{key}`"):
            parse_config(raw, "cfg.yaml")


def test_set_overrides_keep_their_yaml_types_and_relative_paths_follow_the_config(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.csv").write_text("x\n1\n")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": "d/train.csv", "scenario": "x"}, "train": {"epochs": 10}}))
    cfg = load_config(path, ["train.epochs=3", "model.embed_dim=8", "data.dense=[a, b]", "train.progress=false"])
    assert cfg.train.epochs == 3 and cfg.model.options()["embed_dim"] == 8
    assert cfg.data.dense == ["a", "b"] and cfg.train.progress is False
    assert cfg.data.train == str(tmp_path / "d" / "train.csv")


def test_config_values_are_validated():
    with pytest.raises(MsrecError, match="train.epochs"):
        parse_config({"data": {"dataset": "synthetic"}, "train": {"epochs": 0}})
    with pytest.raises(MsrecError, match="data.split"):
        parse_config({"data": {"dataset": "synthetic", "split": [0.5, 0.1, 0.1]}})
    with pytest.raises(MsrecError, match="either `train`"):
        parse_config({"data": {}})


def test_a_config_without_a_scenario_column_is_named_once():
    from msrec.config import DataConfig

    with pytest.raises(MsrecError, match=r"^data.scenario: name the column whose values are the scenarios$"):
        load_splits(DataConfig(train="never-read.csv", sparse=["user"]), seed=0)
