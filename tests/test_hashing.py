"""Hashed id columns (`data.hash_buckets`): a stable hash of the id's text, the same in every process and run;
no vocabulary counted or stored; an id never seen in training gets a bucket; mixed with vocabulary columns,
`min_freq` and `missing_ids`; a run trains and predicts with them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

import msrec
from msrec.config import parse_config
from msrec.data.encode import Encoder
from msrec.data.vocab import hashed, stable_hash
from msrec.errors import MsrecError
from msrec.schema import Schema

VALUES = ["u1", "u2", "", "héllo", "12345678901234567890", "7"]
# FNV-1a 64 of the UTF-8 bytes, then MurmurHash3's fmix64: pinned, so that a change of the function (which would
# silently re-map every id of every trained model) fails here.
EXPECTED = [15319207392522340785, 8888495261740954182, 11413866795212357414, 5988033951110685773,
            7926726433449384721, 16060708914034791575]


def schema(**kw) -> Schema:
    base = {"sparse": ["user", "item"], "dense": [], "lists": {}, "scenario": "scene", "scenario_features": [],
            "labels": ["click"]}
    return Schema(**{**base, **kw})


def table(users: list, items: list | None = None) -> pa.Table:
    n = len(users)
    return pa.table({"user": users, "item": items or [10 + i % 3 for i in range(n)],
                     "scene": ["a", "b"] * (n // 2) + ["a"] * (n % 2), "click": [i % 2 for i in range(n)]})


def test_the_hash_is_pinned_and_reference_exact():
    mask = (1 << 64) - 1

    def reference(text: str) -> int:  # the documented algorithm, one value at a time
        h = 0xCBF29CE484222325
        for byte in text.encode():
            h = ((h ^ byte) * 0x100000001B3) & mask
        for mult in (0xFF51AFD7ED558CCD, 0xC4CEB3FE1A85EC53):
            h ^= h >> 33
            h = (h * mult) & mask
        return h ^ (h >> 33)

    assert [reference(v) for v in VALUES] == EXPECTED
    assert stable_hash(pa.array(VALUES)).tolist() == EXPECTED
    assert stable_hash(pa.chunked_array([pa.array(VALUES[:2]), pa.array(VALUES[2:])])).tolist() == EXPECTED
    assert stable_hash(pa.array(VALUES).slice(2)).tolist() == EXPECTED[2:]  # an offset into the buffers


def test_the_hash_is_the_same_in_another_process():
    code = ("import pyarrow as pa; from msrec.data.vocab import hashed; "
            f"print(hashed(pa.array({VALUES!r}), 1000).tolist(), hashed(pa.array([1, 22, 333]), 97).tolist())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # Python's own hash() would differ: this one must not
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{hashed(pa.array(VALUES), 1000).tolist()} {hashed(pa.array([1, 22, 333]), 97).tolist()}"


def test_an_integer_id_hashes_as_its_text():
    assert hashed(pa.array([1, 22, -333]), 50).tolist() == hashed(pa.array(["1", "22", "-333"]), 50).tolist()


def test_buckets_spread_the_ids():
    ids = hashed(pa.array(np.arange(100_000)), 1000)
    counts = np.bincount(ids, minlength=1001)
    assert counts[0] == 0 and ids.min() == 1 and ids.max() == 1000
    assert counts[1:].min() > 50 and counts[1:].max() < 150  # 100 expected per bucket


def test_an_unseen_id_gets_a_bucket_not_the_unknown_id():
    enc = Encoder(schema(), hash_buckets={"user": 64}).fit(table(["u1", "u2", "u3", "u1"]))
    out = enc.transform(table(["u1", "never-seen", "u3"])).sparse[:, 0].tolist()
    assert 0 not in out
    assert out == hashed(pa.array(["u1", "never-seen", "u3"]), 64).tolist()
    assert out[0] == enc.transform(table(["u1"])).sparse[0, 0]  # the same id in every call
    assert enc.spec().sparse_vocab == [64 + 1, 3 + 1]  # hashed: buckets + the unknown id; item: its vocabulary


def test_hashed_and_vocabulary_columns_mix_with_min_freq():
    train = table(["a", "a", "b", "c"], [1, 1, 2, 3])
    enc = Encoder(schema(), min_freq=2, hash_buckets={"user": 1000}).fit(train)
    users, items = enc.transform(train).sparse.T.tolist()
    assert 0 not in users  # min_freq does not apply to a hashed column: there are no counts
    assert items[0] == items[1] != 0 and items[2] == items[3] == 0  # the vocabulary column keeps min_freq
    assert enc.sparse["item"].vocab == [1] and enc.sparse["user"].vocab == []


@pytest.mark.parametrize("missing_ids", ["category", "unknown"])
def test_a_blank_id_follows_missing_ids(missing_ids):
    enc = Encoder(schema(), missing_ids=missing_ids, hash_buckets={"user": 100}).fit(table(["a", None, "b"]))
    blank = enc.transform(table(["", None])).sparse[:, 0].tolist()
    expected = hashed(pa.array([""]), 100)[0] if missing_ids == "category" else 0
    assert blank == [expected, expected]


def test_a_blank_id_is_an_error_when_asked():
    enc = Encoder(schema(), missing_ids="error", hash_buckets={"user": 100}).fit(table(["a", "b"]))
    with pytest.raises(MsrecError, match="column `user` row 2: missing id"):
        enc.transform(table(["a", None]), "in.csv")


def test_encoder_json_does_not_grow_with_the_ids(tmp_path):
    sizes = []
    for n in (100, 100_000):
        users = [f"user-{i}" for i in range(n)]
        enc = Encoder(schema(), hash_buckets={"user": 10_000}).fit(table(users, [1] * n))
        enc.save(tmp_path / "encoder.json")
        sizes.append((tmp_path / "encoder.json").stat().st_size)
        assert json.loads((tmp_path / "encoder.json").read_text())["sparse"]["user"] == {"kind": "str",
                                                                                        "buckets": 10_000}
    assert sizes[0] == sizes[1] < 1000


def test_a_hashed_encoder_round_trips_through_json(tmp_path):
    enc = Encoder(schema(), hash_buckets={"user": 37, "item": 5}).fit(table(["a", "b", "c"], [1, 2, 3]))
    enc.save(tmp_path / "encoder.json")
    again = Encoder.load(tmp_path / "encoder.json")
    rows = table(["a", "zzz", "c"], [1, 99, 3])
    assert again.transform(rows).sparse.tolist() == enc.transform(rows).sparse.tolist()
    assert again.spec() == enc.spec()
    assert again.id_types() == enc.id_types()  # integer item ids stay integers


def test_hash_buckets_must_name_a_sparse_column():
    with pytest.raises(MsrecError, match="data.hash_buckets: 'price' is not a sparse column"):
        Encoder(schema(), hash_buckets={"price": 10})
    with pytest.raises(MsrecError, match="hash_buckets must be >= 1"):
        parse_config({"data": {"dataset": "synthetic", "hash_buckets": {"user_id": 0}}})


def test_a_run_trains_and_predicts_unseen_ids_with_hashed_columns(tmp_path):
    cfg = {"data": {"dataset": "synthetic", "options": {"rows": 3000, "users": 400, "items": 200},
                    "hash_buckets": {"user_id": 512, "item_id": 128}},
           "model": {"name": "dnn", "mlp": {"hidden": [16]}, "embed_dim": 4},
           "train": {"epochs": 1, "batch_size": 256, "progress": False, "threads": 1}}
    result = msrec.train(cfg, out=tmp_path / "run")
    vocab = result.encoder.spec().sparse_vocab
    assert vocab[:2] == [513, 129] and result.model.embedding.table.num_embeddings == sum(vocab)
    encoder = json.loads((tmp_path / "run" / "encoder.json").read_text())
    assert encoder["sparse"]["user_id"] == {"kind": "int", "buckets": 512}
    rows = pa.table({"user_id": [10**12, 3], "item_id": [7, 10**9], "user_group": [1, 1], "item_category": [2, 2],
                     "scenario": ["s0", "s1"], "user_activity": [1.0, 1.0], "item_price": [3.0, 3.0]})
    encoded = msrec.InputEncoder(tmp_path / "run").encode(rows)
    assert encoded["sparse"][0, 0] == hashed(pa.array([10**12]), 512)[0] != 0  # never seen: its own bucket
    assert encoded["sparse"][1, 1] != 0


def test_the_service_takes_a_number_for_a_hashed_text_column_and_reports_its_buckets(tmp_path):
    """A text column has no vocabulary once hashed: a JSON number (pandas' reading of a CSV's "7") is scored by its
    text form, as the CSV row was in training, instead of being refused; /metadata gives the buckets."""
    from fastapi.testclient import TestClient

    from msrec.serve.app import create_app
    from msrec.serve.records import RecordTable

    csv = tmp_path / "train.csv"
    rows = ["user,item,scene,click"] + [f"{u}{i % 37},{i % 11},{'ab'[i % 2]},{i % 3 == 0:d}"
                                         for i, u in zip(range(600), ["7", "x"] * 300, strict=True)]
    csv.write_text("\n".join(rows) + "\n")
    cfg = {"data": {"train": str(csv), "sparse": ["user", "item"], "scenario": "scene", "labels": ["click"],
                    "hash_buckets": {"user": 64}},
           "model": {"name": "dnn", "mlp": {"hidden": [8]}, "embed_dim": 4},
           "train": {"epochs": 1, "batch_size": 128, "progress": False, "threads": 1}}
    run = msrec.train(cfg, out=tmp_path / "run").run_dir
    records = RecordTable(Encoder.load(run / "encoder.json"))
    as_number = records.table([{"user": 713, "item": 3, "scene": "a"}])
    assert as_number.column("user").to_pylist() == ["713"]
    with TestClient(create_app(run)) as client:
        sparse = {f["name"]: f for f in client.get("/metadata").json()["features"]["sparse"]}
        assert sparse["user"] == {"name": "user", "type": "string", "hash_buckets": 64}
        by_number = client.post("/predict", json=[{"user": 713, "item": 3, "scene": "a"}])
        by_text = client.post("/predict", json=[{"user": "713", "item": 3, "scene": "a"}])
    assert by_number.status_code == 200 and by_number.json() == by_text.json()
