"""`msrec predict` on a Parquet input scores it a chunk at a time (memory for one chunk, whatever the input's size):
the same output as scoring it whole, errors that name the file and the row counted over that file, and no output
file (nor a changed one) when it fails."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import msrec
from msrec import api
from msrec.api import predict, predict_file
from msrec.errors import MsrecError


@pytest.fixture(scope="module")
def run_dir(synthetic_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict-file") / "run"
    msrec.train(synthetic_config(model={"hidden": [8]}, train={"batch_size": 1024}), out=out)
    return out


@pytest.fixture(scope="module")
def folder(synthetic_csv, tmp_path_factory):
    """The synthetic rows as a folder of two Parquet files of several row groups each."""
    table = pacsv.read_csv(synthetic_csv)
    path = tmp_path_factory.mktemp("parquet") / "rows"
    path.mkdir()
    pq.write_table(table.slice(0, 1700), path / "part-0.parquet", row_group_size=600)
    pq.write_table(table.slice(1700), path / "part-1.parquet", row_group_size=500)
    return path


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_chunks_score_as_the_whole_input_does(run_dir, folder, tmp_path, suffix):
    whole = predict(run_dir, folder)
    out = tmp_path / f"scores.{suffix}"
    assert predict_file(run_dir, folder, out, chunk_rows=256) == whole.num_rows == 3000
    chunked = pq.read_table(out) if suffix == "parquet" else pacsv.read_csv(out)
    assert chunked.column_names == whole.column_names
    np.testing.assert_allclose(chunked["score_click"].to_numpy(), whole["score_click"].to_numpy(), atol=1e-7)
    assert chunked["user_id"].to_pylist() == whole["user_id"].to_pylist()  # rows in the input's order
    predict_file(run_dir, folder, tmp_path / "only.parquet", keep_columns=False, chunk_rows=1000)
    assert pq.read_table(tmp_path / "only.parquet").column_names == ["score_click"]


def test_a_bad_value_is_named_by_file_and_row_and_leaves_the_output_as_it_was(run_dir, folder, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    first = pq.read_table(folder / "part-0.parquet")
    pq.write_table(first, bad / "part-0.parquet")
    second = pq.read_table(folder / "part-1.parquet")
    scenario = second["scenario"].to_pylist()
    scenario[700] = "s9"  # row 701 of the second file, in its third chunk of 300
    pq.write_table(second.set_column(second.schema.get_field_index("scenario"), "scenario",
                                      pa.array(scenario, second["scenario"].type)), bad / "part-1.parquet")
    out = tmp_path / "scores.parquet"
    out.write_bytes(b"the user's earlier file")
    with pytest.raises(MsrecError, match=r"part-1\.parquet: column `scenario` row 701: unknown scenario 's9'"):
        predict_file(run_dir, bad, out, chunk_rows=300)
    assert out.read_bytes() == b"the user's earlier file"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_files_whose_columns_differ_are_refused_by_name(run_dir, folder, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pq.write_table(pq.read_table(folder / "part-0.parquet"), mixed / "part-0.parquet")
    pq.write_table(pq.read_table(folder / "part-1.parquet").append_column("note", pa.array(["x"] * 1300)),
                   mixed / "part-1.parquet")
    with pytest.raises(MsrecError, match=r"part-1\.parquet: its columns differ"):
        predict_file(run_dir, mixed, tmp_path / "scores.parquet")
    assert not (tmp_path / "scores.parquet").exists()


def flat(report: dict, prefix: str = "") -> dict:
    """A nested metrics report as {"tasks.click.overall.auc": value, ...}."""
    out = {}
    for key, value in report.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


def test_evaluate_reads_a_parquet_input_in_chunks_and_reports_as_the_whole_file_does(run_dir, folder, synthetic_csv,
                                                                                     monkeypatch):
    """The same report as the CSV read whole, GAUC included: a user's rows in different chunks and files are one
    group (chunk-local groups would split them)."""
    whole = msrec.evaluate(run_dir, synthetic_csv)
    monkeypatch.setattr(api, "CHUNK_ROWS", 256)
    chunked = msrec.evaluate(run_dir, folder)
    assert chunked["tasks"]["click"]["overall"]["rows"] == 3000
    assert "gauc" in json.dumps(whole)
    assert flat(chunked) == pytest.approx(flat(whole), abs=1e-6, nan_ok=True)  # scores batched otherwise: rounding
