"""Encoder: fitted on the training split only; vocabularies, dense scaling, lists, scenarios, JSON."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from msrec.data.encode import Encoder, SparseColumn
from msrec.errors import MsrecError
from msrec.schema import Schema


def schema(**kw) -> Schema:
    base = {"sparse": ["user", "item"], "dense": ["price"], "lists": {"tags": "|"}, "scenario": "scene",
            "scenario_features": ["scene"], "labels": ["click"]}
    return Schema(**{**base, **kw})


TRAIN = pa.table({
    "user": ["u1", "u2", "u2", "u3", "u3", "u3"],
    "item": [10, 11, 11, 12, 12, 12],
    "price": [1.0, 2.0, None, 4.0, 5.0, 6.0],
    "tags": ["a|b", "b", "", None, "c|a|b", "a"],
    "scene": ["web", "app", "app", "web", "tv", "web"],
    "click": [0, 1, 0, 1, 1, 0],
})

VAL = pa.table({
    "user": ["u1", "u9", "u3"],  # u9 is only in validation
    "item": [10, 99, 12],
    "price": [3.0, None, 8.0],
    "tags": ["z|a", "b|z|c", "a|b|c|a"],  # z is unknown
    "scene": ["tv", "web", "app"],
    "click": [1, 0, 1],
})


def fitted(**kw) -> Encoder:
    opts = {k: kw.pop(k) for k in ("min_freq", "list_max_len") if k in kw}
    return Encoder(schema(**kw), **opts).fit(TRAIN)


def column(table, enc: Encoder, name: str) -> list[int]:
    return table.sparse[:, enc.schema.sparse.index(name)].tolist()


def test_vocabulary_is_fitted_on_train_only():
    enc = fitted()
    val = enc.transform(VAL)
    users = column(val, enc, "user")
    assert users[1] == 0  # u9: never seen in training
    assert users[0] != 0 and users[2] != 0 and users[0] != users[2]
    assert column(val, enc, "item")[1] == 0
    train = enc.transform(TRAIN)
    assert 0 not in column(train, enc, "user")  # every training value is known
    assert enc.spec().sparse_vocab[enc.schema.sparse.index("user")] == 3 + 1  # u1, u2, u3 and the unknown slot


def test_min_freq_maps_rare_values_to_zero():
    enc = fitted(min_freq=2)
    ids = column(enc.transform(TRAIN), enc, "user")
    assert ids[0] == 0  # u1 seen once
    assert ids[1] == ids[2] != 0  # u2 seen twice: kept
    assert len(set(ids[3:])) == 1 and ids[3] != 0
    enc3 = fitted(min_freq=3)
    assert set(column(enc3.transform(TRAIN), enc3, "user")) == {0, column(enc3.transform(TRAIN), enc3, "user")[3]}


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.integers(0, 6), min_size=1, max_size=60), min_freq=st.integers(1, 5))
def test_min_freq_property(values, min_freq):
    table = pa.table({"user": values, "scene": ["s"] * len(values), "click": [0] * len(values)})
    enc = Encoder(Schema(sparse=["user"], dense=[], lists={}, scenario="scene", scenario_features=[],
                         labels=["click"]), min_freq=min_freq).fit(table)
    ids = enc.transform(table).sparse[:, 0].numpy()
    counts = {v: values.count(v) for v in values}
    for v, i in zip(values, ids):
        assert (i == 0) == (counts[v] < min_freq)
    frequent = sorted(v for v in counts if counts[v] >= min_freq)
    assert sorted(set(ids[ids > 0].tolist())) == list(range(1, len(frequent) + 1))  # dense ids 1..V


def test_dense_standardized_with_train_moments_and_missing_flag():
    enc = fitted()
    known = np.array([1.0, 2.0, 4.0, 5.0, 6.0])
    mean, std = known.mean(), known.std()
    assert (enc.dense["price"].mean, enc.dense["price"].std) == pytest.approx((mean, std))
    train = enc.transform(TRAIN).dense.numpy()
    assert train.shape == (6, 2)  # value, then its missing flag
    assert train[:, 1].tolist() == [0, 0, 1, 0, 0, 0]
    assert train[2, 0] == 0.0
    assert train[[0, 1, 3, 4, 5], 0] == pytest.approx((known - mean) / std, abs=1e-6)
    val = enc.transform(VAL).dense.numpy()
    assert val[:, 0] == pytest.approx([(3 - mean) / std, 0.0, (8 - mean) / std], abs=1e-6)  # train moments
    assert val[:, 1].tolist() == [0, 1, 0]


def test_constant_or_all_missing_dense_column_does_not_divide_by_zero():
    table = TRAIN.set_column(2, "price", pa.array([None] * 6, pa.float64()))
    enc = Encoder(schema()).fit(table)
    assert torch.isfinite(enc.transform(VAL).dense).all()
    table = TRAIN.set_column(2, "price", pa.array([3.0] * 6))
    enc = Encoder(schema()).fit(table)
    assert enc.transform(VAL).dense[:, 0].tolist() == pytest.approx([0.0, 0.0, 5.0])


def test_lists_are_multi_hot_padded_unknown_dropped_and_truncated():
    enc = fitted(list_max_len=2)
    vocab = enc.lists["tags"].vocab
    assert vocab == ["a", "b", "c"]  # empty and null lists add nothing
    a, b, c = 1, 2, 3
    train = enc.transform(TRAIN).lists[0].tolist()
    assert train == [[a, b], [b, 0], [0, 0], [0, 0], [c, a], [a, 0]]
    val = enc.transform(VAL).lists[0].tolist()
    # "z|a": z is unknown and dropped, a moves up; "b|z|c": z dropped, c kept; truncated to 2
    assert val == [[a, 0], [b, c], [a, b]]
    assert enc.spec().list_vocab == [len(vocab) + 1]


def test_a_column_of_lists_encodes_as_its_joined_text_does():
    """Parquet holds a multi-hot column as `list<string>` (or integers): the same ids as the CSV's `a|b` text,
    a null list or a null id as nothing; a list of another type is an error naming the column."""
    def as_lists(table: pa.Table) -> pa.Table:
        lists = [None if t is None else [x or None for x in t.split("|")] for t in table["tags"].to_pylist()]
        return table.set_column(table.schema.get_field_index("tags"), "tags", pa.array(lists, pa.list_(pa.string())))

    text = fitted()
    native = Encoder(schema()).fit(as_lists(TRAIN))
    assert native.lists["tags"].vocab == text.lists["tags"].vocab
    gaps = VAL.set_column(3, "tags", pa.array(["z|a", "b||c", "a|b|c|a"]))  # "b||c": a null id in the list
    for table in (TRAIN, VAL, gaps):
        assert native.transform(as_lists(table)).lists[0].tolist() == text.transform(table).lists[0].tolist()
    ints = Encoder(schema()).fit(TRAIN.set_column(3, "tags", pa.array([[1, 2], [2], [], None, [3, 1, 2], [1]])))
    assert ints.lists["tags"].vocab == ["1", "2", "3"]
    with pytest.raises(MsrecError, match=r"`tags`.*lists of ids"):
        Encoder(schema()).fit(TRAIN.set_column(3, "tags", pa.array([[1.5]] * 6)))


def test_list_length_defaults_to_the_longest_training_list():
    enc = fitted()
    assert enc.lists["tags"].max_len == 3
    assert enc.transform(TRAIN).lists[0].shape == (6, 3)


def test_scenarios_get_ids_0_to_s_minus_1_with_names_kept():
    enc = fitted()
    assert enc.scenario_names == ["app", "tv", "web"]
    assert enc.transform(TRAIN).scenario.tolist() == [2, 0, 0, 2, 1, 2]
    spec = enc.spec()
    assert spec.scenarios == ["app", "tv", "web"] and spec.num_scenarios == 3
    assert spec.scenario_fields == [enc.schema.sparse.index("scene")]  # the indicator is a sparse field too


def test_unknown_scenario_is_an_error_naming_row_and_value():
    enc = fitted()
    bad = VAL.set_column(4, "scene", pa.array(["tv", "web", "radio"]))
    with pytest.raises(MsrecError, match=r"val.csv: column `scene` row 3: unknown scenario 'radio'"):
        enc.transform(bad, "val.csv")


def test_infinite_dense_value_is_an_error_naming_row():
    bad = TRAIN.set_column(2, "price", pa.array([1.0, 2.0, None, float("-inf"), 5.0, 6.0]))
    with pytest.raises(MsrecError, match=r"train.parquet: column `price` row 4: -inf is not a finite number"):
        Encoder(schema()).fit(bad, "train.parquet")
    with pytest.raises(MsrecError, match=r"val.parquet: column `price` row 4: -inf is not a finite number"):
        fitted().transform(bad, "val.parquet")


@pytest.mark.parametrize("values", [[["a"], ["b"]] * 3, [{"k": 1}, {"k": 2}] * 3])
def test_nested_id_column_is_an_error_naming_column_and_type(values):
    bad = TRAIN.set_column(0, "user", pa.array(values))
    with pytest.raises(MsrecError, match=r"train.parquet: column `user` has type (list|struct).*one integer or text"):
        Encoder(schema()).fit(bad, "train.parquet")


def test_integer_scenarios_are_named_by_their_values():
    table = TRAIN.set_column(4, "scene", pa.array([3, 1, 1, 3, 2, 3]))
    enc = Encoder(schema()).fit(table)
    assert enc.scenario_names == ["1", "2", "3"]
    assert enc.transform(table).scenario.tolist() == [2, 0, 0, 2, 1, 2]


def test_ids_are_int32_and_outputs_have_documented_types():
    enc = fitted()
    t = enc.transform(VAL)
    assert t.sparse.dtype == torch.int32
    assert t.dense.dtype == torch.float32
    assert t.scenario.dtype == torch.int64
    assert t.labels.dtype == torch.float32 and t.labels.shape == (3, 1)
    assert t.sparse.is_contiguous() and t.dense.is_contiguous()


def test_json_round_trip_gives_the_same_encoding(tmp_path):
    enc = fitted(min_freq=2)
    enc.save(tmp_path / "encoder.json")
    back = Encoder.load(tmp_path / "encoder.json")
    a, b = enc.transform(VAL), back.transform(VAL)
    for x, y in [(a.sparse, b.sparse), (a.dense, b.dense), (a.scenario, b.scenario), (a.lists[0], b.lists[0]),
                 (a.labels, b.labels)]:
        assert torch.equal(x, y)
    assert back.spec() == enc.spec()
    assert back.schema == enc.schema


def test_integer_ids_match_when_read_as_text_later():
    """Trained on integer ids (Parquet); predicting from a CSV that reads them as text still matches."""
    enc = fitted()
    val = VAL.set_column(1, "item", pa.array(["10", "99", "12"]))
    assert column(enc.transform(val), enc, "item") == column(enc.transform(VAL), enc, "item")


def test_transform_without_labels_for_prediction():
    enc = fitted()
    t = enc.transform(VAL.drop_columns(["click"]), with_labels=False)
    assert t.labels is None and len(t) == 3


def test_transform_before_fit_is_an_error():
    with pytest.raises(MsrecError, match="before fit"):
        Encoder(schema()).transform(TRAIN)


def test_fit_in_chunks_equals_fit_at_once():
    whole = Encoder(schema(), min_freq=2).fit(TRAIN)
    chunks = Encoder(schema(), min_freq=2).fit_chunks([TRAIN.slice(0, 2), TRAIN.slice(2, 3), TRAIN.slice(5)])
    a, b = chunks.to_dict(), whole.to_dict()
    assert a.pop("dense")["price"] == pytest.approx(b.pop("dense")["price"])
    assert a == b


def test_training_batches_can_leave_out_the_evaluation_columns():
    enc = Encoder(schema(user="user")).fit(TRAIN)
    assert enc.transform(VAL).user.tolist() == [0, 1, 2]  # groups for GAUC
    assert enc.transform(VAL, with_evaluation_columns=False).user is None


def test_rows_without_a_user_are_each_their_own_gauc_group():
    enc = Encoder(schema(user="viewer")).fit(TRAIN)  # a user column that is not a feature may lack values
    val = pa.concat_tables([VAL.append_column("viewer", pa.array(["v1", None, "v1"])),
                            VAL.append_column("viewer", pa.array(["", None, " "]))])
    groups = enc.transform(val).user.tolist()
    assert groups[0] == groups[2]  # the same user
    anonymous = [groups[1], *groups[3:]]
    assert len(set(anonymous)) == 4 and groups[0] not in anonymous


@pytest.mark.parametrize("bad", [" 11", "1_000", str(2**70)])
def test_text_ids_that_arrow_cannot_read_as_integers_name_the_row(bad):
    """Python's int() accepts these, Arrow does not: the row is still found and named."""
    enc = fitted()
    val = VAL.set_column(1, "item", pa.array(["10", bad, "12"]))
    with pytest.raises(MsrecError, match=rf"in.csv: column `item` row 2: {bad!r} is not an integer id"):
        enc.transform(val, "in.csv")


def test_streaming_fit_turns_integer_ids_into_text_when_a_later_chunk_holds_text():
    """As a fit on the whole column would: one text id makes the column text, counted values included."""
    first = TRAIN.slice(0, 3)
    later = TRAIN.slice(3).set_column(1, "item", pa.array(["12", "x", "x"]))
    enc = Encoder(schema(lists={})).fit_chunks([first, later], "data/")
    assert enc.sparse["item"] == SparseColumn("str", ["10", "11", "12", "x"])
    probe = VAL.set_column(1, "item", pa.array(["10", "x", "13"]))
    assert column(enc.transform(probe), enc, "item") == [1, 4, 0]


def test_written_out_missing_users_are_not_one_pretend_user():
    enc = Encoder(schema(user="viewer")).fit(TRAIN)
    val = VAL.append_column("viewer", pa.array(["nan", "NULL", " "]))
    assert len(set(enc.transform(val).user.tolist())) == 3


# ------------------------------------------------------------------ blank ids (data.missing_ids)

BLANKS = pa.table({"city": ["paris", "", "rome", None, " nan ", "paris"], "scene": ["web"] * 6, "click": [0, 1] * 3})


def city_encoder(missing_ids: str, min_freq: int = 1) -> Encoder:
    return Encoder(Schema(sparse=["city"], dense=[], lists={}, scenario="scene", scenario_features=[],
                          labels=["click"]), min_freq=min_freq, missing_ids=missing_ids)


def test_a_blank_id_is_a_category_of_its_own_by_default():
    enc = Encoder(city_encoder("category").schema).fit(BLANKS)  # the default
    assert enc.missing_ids == "category" and enc.sparse["city"] == SparseColumn("str", ["paris", "rome", None])
    assert enc.transform(BLANKS).sparse[:, 0].tolist() == [1, 3, 2, 3, 3, 1]  # "", null and " nan " alike
    probe = BLANKS.set_column(0, "city", pa.array(["NULL", "oslo", "rome", "", "x", None]))
    assert enc.transform(probe, with_labels=False).sparse[:, 0].tolist() == [3, 0, 2, 3, 0, 3]


def test_a_rare_or_unseen_blank_is_unknown():
    enc = city_encoder("category", min_freq=4).fit(BLANKS.slice(0, 3))  # one blank: below min_freq
    assert enc.sparse["city"].vocab == []
    unseen = city_encoder("category").fit(BLANKS.slice(0, 1))
    assert unseen.transform(BLANKS).sparse[:, 0].tolist() == [1, 0, 0, 0, 0, 1]


def test_blank_ids_as_unknown():
    enc = city_encoder("unknown").fit(BLANKS)
    assert enc.sparse["city"].vocab == ["paris", "rome"]
    assert enc.transform(BLANKS).sparse[:, 0].tolist() == [1, 0, 2, 0, 0, 1]


def test_blank_ids_as_errors_name_the_row_counted_from_1():
    with pytest.raises(MsrecError, match=r"^train.csv: column `city` row 2: missing id$"):
        city_encoder("error").fit(BLANKS, "train.csv")
    enc = city_encoder("error").fit(BLANKS.slice(0, 1))
    with pytest.raises(MsrecError, match=r"^in.csv: column `city` row 2: missing id$") as err:
        enc.transform(BLANKS.slice(2), "in.csv")
    assert (err.value.column, err.value.row) == ("city", 1)  # a service points at record 1 (counted from 0)


def test_integer_blank_ids_and_a_missing_scenario():
    table = pa.table({"city": pa.array([7.0, None, float("nan"), 7.0]), "scene": ["a", "b", "a", None],
                      "click": [0, 1, 0, 1]})
    with pytest.raises(MsrecError, match="column `scene` row 4: missing scenario"):  # whatever missing_ids says
        city_encoder("category").fit(table)
    enc = city_encoder("category").fit(table.slice(0, 3))
    assert enc.sparse["city"] == SparseColumn("int", [7, None])
    assert enc.transform(table.slice(0, 3)).sparse[:, 0].tolist() == [1, 2, 2]


# ------------------------------------------------------------------ integer ids read as text (CSV)


def test_text_ids_that_are_all_canonical_integers_fit_as_integers():
    table = TRAIN.set_column(1, "item", pa.array(["10", "11", "11", "-12", "12", "0"]))
    enc = Encoder(schema()).fit(table)
    assert enc.sparse["item"] == SparseColumn("int", [-12, 0, 10, 11, 12])
    assert enc.id_types()["item"] == pa.int64() and enc.id_types()["user"] == pa.string()
    as_ints = TRAIN.set_column(1, "item", pa.array([10, 11, 99, -12, 12, 0]))
    assert column(enc.transform(as_ints), enc, "item") == [3, 4, 0, 1, 5, 2]  # Parquet/JSON integers match
    for bad in ["1.5", "abc", "9" * 30]:
        probe = VAL.set_column(1, "item", pa.array(["10", bad, "12"]))
        with pytest.raises(MsrecError, match=rf"in.csv: column `item` row 2: {bad!r} is not an integer id"):
            enc.transform(probe, "in.csv")


@pytest.mark.parametrize("values", [["007", "8"], ["+7", "8"], [" 7", "8"], ["9" * 30, "8"], ["-0", "8"],
                                    ["7", "x"]])
def test_text_ids_that_are_not_canonical_integers_stay_text(values):
    table = TRAIN.slice(0, 2).set_column(1, "item", pa.array(values))
    enc = Encoder(schema()).fit(table)
    assert enc.sparse["item"] == SparseColumn("str", sorted(values))
    assert column(enc.transform(table), enc, "item") == [sorted(values).index(v) + 1 for v in values]


def test_scenarios_read_as_text_integers_are_integers_and_an_unknown_one_is_named():
    table = TRAIN.set_column(4, "scene", pa.array(["2", "0", "0", "2", "1", "2"]))
    enc = Encoder(schema()).fit(table)
    assert enc.scenario.kind == "int" and enc.scenario_names == ["0", "1", "2"]
    bad = VAL.set_column(4, "scene", pa.array(["1", "web", "2"]))
    with pytest.raises(MsrecError, match=r"in.csv: column `scene` row 2: unknown scenario 'web' \(known: 0, 1, 2\)"):
        enc.transform(bad, "in.csv")


def test_streaming_fit_of_text_integers_turns_text_when_a_later_chunk_is_not_canonical():
    first = TRAIN.slice(0, 3).set_column(1, "item", pa.array(["10", "11", "11"]))
    later = TRAIN.slice(3).set_column(1, "item", pa.array(["012", "12", "12"]))
    enc = Encoder(schema(lists={})).fit_chunks([first, later])
    assert enc.sparse["item"] == SparseColumn("str", ["012", "10", "11", "12"])


# ------------------------------------------------------------------ labels and files of format 1


def test_a_date_declared_as_label_is_named_as_written():
    import datetime

    table = TRAIN.set_column(5, "click", pa.array([datetime.date(2010, 10, 6)] * 6))
    with pytest.raises(MsrecError, match=r"^in.csv: column `click` row 1: '2010-10-06' is not a 0/1 label$"):
        Encoder(schema()).fit(table, "in.csv")
    text = TRAIN.set_column(5, "click", pa.array(["0", "1", "yes", "0", "1", "0"]))
    with pytest.raises(MsrecError, match=r"column `click` row 3: 'yes' is not a 0/1 label"):
        Encoder(schema()).fit(text)


V1_FILE = (  # written by msrec 0.1 for TRAIN
    '{"version": 1, "schema": {"sparse": ["user", "item", "scene"], "dense": ["price"], "lists": {"tags": "|"}, '
    '"scenario": "scene", "scenario_features": ["scene"], "labels": ["click"], "user": null, "truth": {}}, '
    '"min_freq": 1, "list_max_len": 32, "sparse": {"user": {"kind": "str", "vocab": ["u1", "u2", "u3"]}, '
    '"item": {"kind": "int", "vocab": [10, 11, 12]}, "scene": {"kind": "str", "vocab": ["app", "tv", "web"]}}, '
    '"lists": {"tags": {"sep": "|", "kind": "str", "max_len": 3, "vocab": ["a", "b", "c"]}}, '
    '"dense": {"price": {"mean": 3.6, "std": 1.8547236990991407}}, '
    '"scenario": {"kind": "str", "values": ["app", "tv", "web"], "names": ["app", "tv", "web"]}}')


def test_an_encoder_file_of_format_1_loads_and_encodes_as_before(tmp_path):
    (tmp_path / "encoder.json").write_text(V1_FILE)
    old = Encoder.load(tmp_path / "encoder.json")
    new = fitted()
    a, b = old.transform(VAL), new.transform(VAL)
    for x, y in [(a.sparse, b.sparse), (a.dense, b.dense), (a.scenario, b.scenario), (a.lists[0], b.lists[0])]:
        assert torch.equal(x, y)
    assert old.spec() == new.spec()
    assert old.missing_ids == "error"  # as 0.1 trained it: a blank id stays an error when scoring
    with pytest.raises(MsrecError, match="column `user` row 2: missing id"):
        old.transform(VAL.set_column(0, "user", pa.array(["u1", "", "u3"])))
    old.save(tmp_path / "again.json")
    assert Encoder.load(tmp_path / "again.json").to_dict()["version"] == 2


@pytest.mark.parametrize("change", [{"version": 3}, {"missing_ids": "maybe"}, {"sparse": {"user": {"kind": "float"}}}])
def test_a_bad_encoder_file_is_refused(change):
    d = {**fitted().to_dict(), **change}
    with pytest.raises(MsrecError, match="encoder.json: .*(not a valid encoder file|encoder version 3)"):
        Encoder.from_dict(d, "encoder.json")
