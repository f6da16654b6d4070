"""Streaming Parquet training: same encoder as in memory, every row once per epoch, bounded buffer."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

import msrec
from msrec.data.datasets import synthetic
from msrec.data.encode import Encoder
from msrec.data.stream import ParquetFiles, ParquetStream
from msrec.errors import MsrecError
from msrec.schema import Schema

FEATURES = {"sparse": ["user_id", "item_id", "user_group", "item_category"], "dense": ["user_activity", "item_price"],
            "scenario": "scenario", "labels": ["click"]}


@pytest.fixture(scope="module")
def parquet_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    table = synthetic.generate(rows=30_000, seed=3)
    (folder / "train").mkdir()
    pq.write_table(table.slice(0, 12_000), folder / "train" / "a.parquet", row_group_size=2_500)
    pq.write_table(table.slice(12_000, 12_000), folder / "train" / "b.parquet", row_group_size=5_000)
    pq.write_table(table.slice(24_000, 3_000), folder / "val.parquet")
    pq.write_table(table.slice(27_000), folder / "test.parquet")
    return folder, table


def _schema() -> Schema:
    return Schema(sparse=FEATURES["sparse"], dense=FEATURES["dense"], lists={}, scenario="scenario",
                  scenario_features=["scenario"], labels=["click"])


def test_streaming_encoder_fit_equals_in_memory_fit(parquet_folder):
    folder, table = parquet_folder
    files = ParquetFiles(folder / "train", table.column_names)
    streamed = Encoder(_schema(), min_freq=2).fit_chunks(files.chunks())
    in_memory = Encoder(_schema(), min_freq=2).fit(table.slice(0, 24_000))
    assert streamed.sparse == in_memory.sparse
    assert streamed.scenario == in_memory.scenario
    for name in FEATURES["dense"]:
        assert streamed.dense[name].mean == pytest.approx(in_memory.dense[name].mean, rel=1e-9)
        assert streamed.dense[name].std == pytest.approx(in_memory.dense[name].std, rel=1e-9)


def test_every_row_once_per_epoch_and_shuffled(parquet_folder):
    folder, table = parquet_folder
    encoder = Encoder(_schema()).fit(table.slice(0, 24_000))
    stream = ParquetStream(ParquetFiles(folder / "train", table.column_names), encoder, buffer_rows=4_000)
    assert len(stream) == 24_000
    in_memory = encoder.transform(table.slice(0, 24_000))
    # Identify rows by (user, item, price): nearly unique; compare the multisets.
    def keys(sparse, dense):
        return sorted(zip(sparse[:, 0].tolist(), sparse[:, 1].tolist(), dense[:, 1].tolist()))

    batches = list(stream.batches(1000, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert all(len(b) == 1000 for b in batches[:-1])
    seen_sparse = torch.cat([b.sparse for b in batches])
    seen_dense = torch.cat([b.dense for b in batches])
    assert keys(seen_sparse, seen_dense) == keys(in_memory.sparse, in_memory.dense)
    assert not torch.equal(seen_sparse, in_memory.sparse)  # shuffled, not file order
    again = torch.cat([b.sparse for b in stream.batches(1000, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert torch.equal(again, seen_sparse)  # seeded


def test_shards_partition_the_row_groups(parquet_folder):
    folder, table = parquet_folder
    encoder = Encoder(_schema()).fit(table.slice(0, 1_000))
    stream = ParquetStream(ParquetFiles(folder / "train", table.column_names), encoder)
    shards = [stream.shard(r, 2) for r in range(2)]
    assert sum(len(s) for s in shards) == len(stream)
    assert not set(shards[0].files.groups) & set(shards[1].files.groups)
    assert all(s.world_size == 2 and s.encoder is encoder for s in shards)
    rows = [sum(len(b) for b in s.batches(1000)) for s in shards]
    assert sum(rows) == len(stream) and all(len(b) <= 500 for b in shards[0].batches(1000))  # its share
    groups = len(stream.files.groups)
    lone = stream.shard(groups, groups + 1)  # one rank more than row groups: it reads nothing
    assert len(lone) == 0 and lone.steps(1024) == 0


def test_a_stream_needs_a_fitted_encoder(parquet_folder):
    folder, table = parquet_folder
    with pytest.raises(MsrecError, match="fit the encoder first"):
        ParquetStream(ParquetFiles(folder / "train", table.column_names), Encoder(_schema()))


def test_streaming_training_learns_like_in_memory(parquet_folder):
    folder, _ = parquet_folder
    data = {**FEATURES, "train": str(folder / "train"), "val": str(folder / "val.parquet"),
            "test": str(folder / "test.parquet")}
    cfg = {"model": {"name": "dnn", "hidden": [64]}, "train": {"epochs": 3, "batch_size": 512, "lr": 0.003,
                                                               "progress": False}}
    streamed = msrec.train({**cfg, "data": {**data, "streaming": True, "shuffle_buffer": 5_000}}, save=False)
    in_memory = msrec.train({**cfg, "data": data}, save=False)
    a, b = streamed.metrics["test"]["overall"]["auc"], in_memory.metrics["test"]["overall"]["auc"]
    assert a > 0.62 and b > 0.62
    assert abs(a - b) < 0.03


def test_bad_row_group_names_the_file(parquet_folder, tmp_path):
    folder, table = parquet_folder
    bad = table.slice(0, 100).set_column(table.column_names.index("click"), "click",
                                         pq.read_table(folder / "val.parquet")["item_price"].slice(0, 100))
    pq.write_table(bad, tmp_path / "bad.parquet")
    files = ParquetFiles(tmp_path / "bad.parquet", table.column_names)
    with pytest.raises(MsrecError, match=r"bad.parquet.*click.*row \d+"):
        Encoder(_schema()).fit_chunks(files.chunks(), str(tmp_path / "bad.parquet"))
    with pytest.raises(MsrecError, match="no Parquet files"):
        ParquetFiles(tmp_path / "missing", table.column_names)


def test_evaluating_a_streaming_run_reads_only_its_test_file(parquet_folder, tmp_path):
    """A training set larger than memory must not be read again to evaluate the run: here it is gone."""
    folder, table = parquet_folder
    train = tmp_path / "train"
    train.mkdir()
    pq.write_table(table.slice(0, 12_000), train / "a.parquet", row_group_size=4_000)
    data = {**FEATURES, "train": str(train), "val": str(folder / "val.parquet"), "test": str(folder / "test.parquet"),
            "streaming": True}
    result = msrec.train({"data": data, "model": {"name": "dnn", "hidden": [16]},
                          "train": {"epochs": 1, "batch_size": 1024, "progress": False}}, out=tmp_path / "run")
    (train / "a.parquet").unlink()
    train.rmdir()
    metrics = msrec.evaluate(tmp_path / "run")
    assert metrics["tasks"]["click"]["overall"]["rows"] == 3_000
    assert metrics["macro_auc"] == pytest.approx(result.metrics["test"]["macro_auc"], abs=1e-6)
