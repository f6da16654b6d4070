"""The scoring service: same scores as `msrec predict`, a 4xx naming the field for every kind of bad
request (and still serving afterwards), a clear failure at start-up for an incomplete run directory."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_fixtures import make_raw
from typer.testing import CliRunner

from msrec.cli import app as cli
from msrec.errors import MsrecError
from msrec.models import list_models
from msrec.serve.app import create_app

MODELS = [entry.name for entry in list_models()]
TASKS = ["click", "buy"]


def request_rows() -> list[dict]:
    """Raw records as a client sends them: some with ids never seen in training, one with a missing price."""
    rows = make_raw(25, seed=21, with_labels=False).to_pylist()
    rows[0].update(user_id=987654, zip="99999", tags="never|seen")
    rows[1].update(item_id=5, price=None, tier="unheard-of")
    return rows


@pytest.fixture(scope="module")
def client(run_dirs):
    with TestClient(create_app(run_dirs("split_merge"), max_records=50), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("name", MODELS)
def test_served_scores_equal_msrec_predict(name, run_dirs, tmp_path):
    rows = request_rows()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    result = CliRunner().invoke(cli, ["predict", str(run_dirs(name)), str(tmp_path / "rows.parquet"),
                                      str(tmp_path / "scores.parquet"), "--scores-only"])
    assert result.exit_code == 0, result.output
    offline = pq.read_table(tmp_path / "scores.parquet")
    expected = np.stack([offline[f"score_{t}"].to_numpy() for t in TASKS], 1)

    with TestClient(create_app(run_dirs(name))) as c:
        answer = c.post("/predict", json=rows)
    assert answer.status_code == 200, answer.text
    assert answer.json()["tasks"] == TASKS
    served = np.array(answer.json()["scores"])
    assert served.shape == (len(rows), len(TASKS))
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)


def test_records_are_scored_in_order_and_independently_of_the_request(client):
    rows = request_rows()
    together = np.array(client.post("/predict", json=rows).json()["scores"])
    reversed_ = np.array(client.post("/predict", json=rows[::-1]).json()["scores"])
    alone = np.array([client.post("/predict", json=[r]).json()["scores"][0] for r in rows[:3]])
    np.testing.assert_allclose(reversed_[::-1], together, atol=1e-6)
    np.testing.assert_allclose(alone, together[:3], atol=1e-6)
    assert len(np.unique(together.round(6), axis=0)) > 1  # the rows really are scored differently


def test_a_multi_hot_list_may_be_sent_as_a_json_array(client):
    """`["t1", "t3"]` scores as the training data's text `"t1|t3"` (numbers as their text form); an empty array
    as an empty list."""
    rows = request_rows()
    rows[2]["tags"], rows[3]["tags"] = "t1|t3", ""
    as_text = np.array(client.post("/predict", json=rows).json()["scores"])
    arrays = [{**r, "tags": r["tags"].split("|") if r["tags"] else []} for r in rows]
    answer = client.post("/predict", json=arrays)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(np.array(answer.json()["scores"]), as_text, atol=1e-6)
    dropped = np.array(client.post("/predict", json=[{**rows[2], "tags": ["t1"]}]).json()["scores"])
    assert not np.allclose(dropped, as_text[2:3], atol=1e-6)  # the list is read: one tag less scores otherwise


def test_one_request_is_one_batch(client):
    """The records of a request go through the model in one forward pass, not one per record."""
    sizes: list[int] = []
    hook = client.app.state.service.run.model.register_forward_hook(lambda m, args, out: sizes.append(len(out)))
    try:
        assert client.post("/predict", json=request_rows()).status_code == 200
    finally:
        hook.remove()
    assert sizes == [len(request_rows())]


def test_health_and_metadata(client, encoder):
    assert client.get("/health").json() == {"status": "ok"}
    meta = client.get("/metadata").json()
    assert meta["model"] == "split_merge"
    assert meta["scenario"] == {"column": "page", "names": encoder.scenario_names}
    assert meta["tasks"] == TASKS
    assert [f["name"] for f in meta["features"]["sparse"]] == encoder.schema.sparse
    assert [f["name"] for f in meta["features"]["dense"]] == ["price", "age"]
    assert meta["features"]["lists"] == [{"name": "tags", "type": "string", "separator": "|"}]
    assert meta["version"]


def _without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


BAD_REQUESTS = {
    # name: (body builder, expected status, the field (or None for the whole body) the answer must name)
    "missing sparse feature": (lambda r: [r[0], _without(r[1], "item_id")], 422, "item_id"),
    "missing dense feature": (lambda r: [_without(r[0], "age")], 422, "age"),
    "missing scenario": (lambda r: [_without(r[0], "page")], 422, "page"),
    "wrong type (text for an integer id)": (lambda r: [{**r[0], "user_id": "alice"}], 422, "user_id"),
    "wrong type (object for a text id)": (lambda r: [{**r[0], "zip": {"code": 1}}], 422, "zip"),
    "wrong type (text for a number)": (lambda r: [{**r[0], "price": "cheap"}], 422, "price"),
    "non-finite number": (lambda r: [{**r[0], "age": float("inf")}], 422, "age"),
    "id beyond int64": (lambda r: [{**r[0], "user_id": 2**70}], 422, "user_id"),
    "unknown scenario": (lambda r: [r[0], {**r[1], "page": "checkout"}], 422, "page"),
    "wrong type (number for a multi-hot list)": (lambda r: [{**r[0], "tags": 5}], 422, "tags"),
    "an id holding the list's separator": (lambda r: [{**r[0], "tags": ["t1", "t2|t3"]}], 422, "tags"),
    "not a list": (lambda r: r[0], 422, None),
    "too many records": (lambda r: (r * 3)[:51], 413, None),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_a_4xx_naming_the_field_and_the_service_keeps_serving(case, client):
    build, status, field = BAD_REQUESTS[case]
    rows = request_rows()
    body = json.dumps(build(rows)).encode()  # json.dumps writes inf as `Infinity`, as a careless client would
    answer = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    if field is None:
        assert detail[0]["loc"] == ["body"] and detail[0]["msg"]
    else:
        assert any(d.get("field") == field and d["loc"][-1] == field for d in detail), detail
        assert field in json.dumps(detail)
    assert client.post("/predict", json=rows[:2]).status_code == 200


def test_oversized_and_malformed_bodies(client):
    big = client.post("/predict", content=b"[" + b" " * (2 << 20) + b"]", headers={"content-type": "application/json"})
    assert big.status_code == 413 and "bytes" in big.json()["detail"][0]["msg"]
    broken = client.post("/predict", content=b'[{"user_id": ', headers={"content-type": "application/json"})
    assert broken.status_code == 400 and broken.json()["detail"][0]["type"] == "json_invalid"
    assert client.get("/health").status_code == 200


def test_unexpected_error_is_a_500_for_that_request_only(client, monkeypatch):
    import msrec.api

    def boom(*args, **kwargs):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(msrec.api, "score_table", boom)
    assert client.post("/predict", json=request_rows()[:1]).status_code == 500
    monkeypatch.undo()
    assert client.post("/predict", json=request_rows()[:1]).status_code == 200


@pytest.mark.parametrize("missing", ["model.safetensors", "encoder.json"])
def test_run_directory_missing_a_file_fails_at_start_up(missing, run_dirs, tmp_path):
    broken = shutil.copytree(run_dirs("dnn"), tmp_path / "run")
    (broken / missing).unlink()
    with pytest.raises(MsrecError, match=f"missing {missing}"):
        create_app(broken)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command(run_dirs, tmp_path):
    """`msrec serve` end to end: a broken run directory exits at once with the file named; a good one answers."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    broken = shutil.copytree(run_dirs("dnn"), tmp_path / "run")
    (broken / "config.yaml").unlink()
    failed = subprocess.run([sys.executable, "-m", "msrec", "serve", str(broken)], capture_output=True, text=True,
                            timeout=60, env=env, check=False)
    assert failed.returncode == 1 and "missing config.yaml" in failed.stderr

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "msrec", "serve", str(run_dirs("dnn")), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    assert json.load(r) == {"status": "ok"}
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "service did not start"
                time.sleep(0.2)
        req = urllib.request.Request(f"{url}/predict", data=json.dumps(request_rows()[:4]).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert len(json.load(r)["scores"]) == 4
    finally:
        proc.terminate()
        proc.wait(timeout=30)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)


@st.composite
def mangled_records(draw) -> list:
    """Valid records with some fields replaced by arbitrary JSON values, dropped, or joined by extra keys."""
    rows = request_rows()[: draw(st.integers(1, 4))]
    for row in rows:
        for key in list(row):
            action = draw(st.sampled_from(["keep", "keep", "keep", "replace", "drop"]))
            if action == "replace":
                row[key] = draw(json_values)
            elif action == "drop":
                del row[key]
        row.update(draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2)))
    return rows


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=mangled_records())
def test_no_request_body_gets_a_server_error(client, records):
    answer = client.post("/predict", content=json.dumps(records).encode(), headers={"content-type": "application/json"})
    assert answer.status_code in (200, 400, 413, 422), answer.text
    if answer.status_code == 200:
        assert len(answer.json()["scores"]) == len(records)
    else:
        assert answer.json()["detail"]
