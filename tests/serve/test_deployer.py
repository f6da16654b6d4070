"""The deployer's path: docs/serving.md's example runs as written against a real run directory and its
onnxruntime scores equal `msrec predict`'s; `InputEncoder` gives the exported graph's inputs
from any form of raw rows, without labels."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

import msrec
from msrec.errors import MsrecError
from msrec.serve import InputEncoder

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"


def doc_example() -> str:
    """The python block after the `tested:` marker in docs/serving.md."""
    marker = r"<!-- tested: tests/serve/test_deployer.py -->\n```python\n(.*?)\n```"
    match = re.search(marker, DOC.read_text(), re.DOTALL)
    assert match, "docs/serving.md lost its tested example"
    return match.group(1)


def test_the_documented_example_runs_and_scores_as_msrec_predict(ml_csv, cli, tmp_path, monkeypatch):
    shutil.copytree(ml_csv / "runs" / "ml-dnn", tmp_path / "runs" / "ml-dnn")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(doc_example(), str(DOC), "exec"), namespace)  # noqa: S102  (our own documentation)
    rows, scores = namespace["rows"], namespace["scores"]
    assert scores.shape == (len(rows), 1) and printed.getvalue().strip()

    pacsv.write_csv(pa.Table.from_pylist(rows), tmp_path / "rows.csv")
    result = cli("predict", "runs/ml-dnn", "rows.csv", "scores.csv", "--scores-only")
    assert result.code == 0, result.stderr
    expected = pacsv.read_csv(tmp_path / "scores.csv")["score_label"].to_numpy()
    np.testing.assert_allclose(scores[:, 0], expected, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def ml_rows(ml_csv) -> pa.Table:
    """The first rows of the MovieLens test CSV, labels included, read as predict reads them."""
    return InputEncoder(ml_csv / "runs" / "ml-dnn").table(ml_csv / "test.csv").slice(0, 50)


def test_every_form_of_rows_gives_the_same_inputs_in_the_graphs_dtypes(ml_csv, ml_rows, tmp_path):
    import pandas as pd

    run_dir = ml_csv / "runs" / "ml-dnn"
    encoder = InputEncoder(run_dir)
    pacsv.write_csv(ml_rows.drop_columns(["label"]), tmp_path / "rows.csv")
    forms = {"table": ml_rows, "dicts": ml_rows.to_pylist(), "csv": tmp_path / "rows.csv",
             "pandas": pd.read_csv(tmp_path / "rows.csv"), "pandas records": pd.read_csv(tmp_path / "rows.csv")
             .to_dict(orient="records")}
    reference = msrec.InputEncoder(run_dir).encode(ml_rows)
    assert list(reference) == encoder.names == ["sparse", "dense", "scenario"]
    assert {k: v.dtype for k, v in reference.items()} == {"sparse": np.int64, "dense": np.float32,
                                                          "scenario": np.int64}
    assert reference["sparse"].shape == (50, 7) and reference["dense"].shape == (50, 2)
    for label, rows in forms.items():
        inputs = encoder.encode(rows)
        for name in reference:
            np.testing.assert_array_equal(inputs[name], reference[name], err_msg=f"{label}: {name}")


def test_list_inputs_are_named_and_padded(run_dirs, encoder):
    """The shared serve fixtures have a multi-hot `tags` column: it becomes `list_0`, `[B, max_len]`."""
    from serve_fixtures import make_raw

    inputs = InputEncoder(run_dirs("dnn")).encode(make_raw(7, seed=3, with_labels=False).to_pylist())
    assert list(inputs) == ["sparse", "dense", "scenario", "list_0"]
    assert inputs["list_0"].shape == (7, encoder.lists["tags"].max_len) and inputs["list_0"].dtype == np.int64


def test_a_bad_record_names_the_record_and_the_field(ml_csv, ml_rows):
    rows = ml_rows.slice(0, 3).to_pylist()
    rows[2]["scenario"] = 9
    with pytest.raises(MsrecError, match=r"record 2, field `scenario`: unknown scenario"):
        msrec.InputEncoder(ml_csv / "runs" / "ml-dnn").encode(rows)
    with pytest.raises(MsrecError, match="list of dicts"):
        InputEncoder(ml_csv / "runs" / "ml-dnn").encode(42)
    with pytest.raises(MsrecError, match="no encoder.json"):
        InputEncoder(ml_csv)
