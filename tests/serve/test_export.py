"""Export parity: every registered model, TorchScript and ONNX (through onnxruntime), against its eager
outputs on batches whose size and scenario mix differ from the example it was traced on."""

from __future__ import annotations

import pytest
import torch
from serve_fixtures import SCENARIOS, make_raw
from typer.testing import CliRunner

from msrec.cli import app
from msrec.data.table import Batch
from msrec.errors import MsrecError
from msrec.models import list_models
from msrec.runs import load_run
from msrec.serve.export import FORMATS, ExportedModel, batch_inputs, example_batch, export_run

MODELS = [entry.name for entry in list_models()]
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}


def parity_batches(encoder) -> dict[str, Batch]:
    """Other sizes than the traced example (2 rows per scenario), skewed mixes, a missing scenario, one row."""
    def encode(n: int, seed: int, scenarios: list[str]) -> Batch:
        return encoder.transform(make_raw(n, seed, scenarios), with_labels=False).batch(slice(0, n))

    return {"skewed": encode(41, 11, ["cart", "cart", "cart", "search", "home"]),
            "missing_search": encode(23, 12, ["home", "cart"]),
            "one_scenario": encode(9, 13, ["search"]),
            "one_row": encode(1, 14, ["cart"])}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", MODELS)
def test_exported_matches_eager(name, fmt, run_dirs, encoder, tmp_path):
    run_dir = run_dirs(name)
    model = load_run(run_dir).model
    exported = ExportedModel(export_run(run_dir, fmt, tmp_path / f"{name}{SUFFIX[fmt]}"))
    assert exported.metadata["model"] == name and exported.metadata["scenarios"] == encoder.scenario_names
    if fmt == "onnx":  # every file takes the documented inputs, also those the model never reads
        import onnx

        onnx.checker.check_model(str(exported.path))
        assert [i.name for i in exported.session.get_inputs()] == ["sparse", "dense", "scenario", "list_0"]
    for label, batch in parity_batches(encoder).items():
        with torch.no_grad():
            expected = model(batch)
        logits, scores = exported(*batch_inputs(batch))
        assert logits.shape == expected.shape == (len(batch), 2), label
        assert float((logits - expected).abs().max()) < 1e-5, f"{name} {fmt} {label}: logits differ"
        assert float((scores - torch.sigmoid(expected)).abs().max()) < 1e-5, f"{name} {fmt} {label}"


def test_parity_batches_differ_from_the_example(encoder):
    """The checks above mean something only if the batches are not the traced example's shape and mix."""
    example = example_batch(encoder.spec())
    counts = torch.bincount(example.scenario, minlength=len(SCENARIOS))
    assert (counts > 0).all()
    for batch in parity_batches(encoder).values():
        assert len(batch) != len(example)
        assert not torch.equal(torch.bincount(batch.scenario, minlength=len(SCENARIOS)), counts)
    missing = parity_batches(encoder)["missing_search"].scenario
    assert not (missing == encoder.scenario_names.index("search")).any()


def test_export_command_writes_a_loadable_file(run_dirs, tmp_path):
    out = tmp_path / "model.onnx"
    result = CliRunner().invoke(app, ["export", str(run_dirs("dnn")), "--format", "onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert ExportedModel(out).metadata["format"] == "onnx"


def test_unknown_format_is_an_error(run_dirs, tmp_path):
    with pytest.raises(MsrecError, match="format"):
        export_run(run_dirs("dnn"), "tflite", tmp_path / "m.tflite")


@pytest.mark.parametrize(("fmt", "name"), [("onnx", "x.pt"), ("torchscript", "x.onnx"), ("onnx", "x"),
                                           ("torchscript", "x.bin"), (None, "x.bin")])
def test_an_extension_that_does_not_name_the_format_is_refused(run_dirs, tmp_path, fmt, name):
    """ONNX in a `.pt` file would fail later, deep inside whatever loads it by its extension."""
    args = ["export", str(run_dirs("dnn")), "--out", str(tmp_path / name), *(["--format", fmt] if fmt else [])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert isinstance(result.exception, MsrecError) and "--out" in str(result.exception)
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize(("name", "fmt"), [("model.onnx", "onnx"), ("model.pt", "torchscript")])
def test_without_format_the_extension_chooses_it(run_dirs, tmp_path, name, fmt):
    result = CliRunner().invoke(app, ["export", str(run_dirs("dnn")), "--out", str(tmp_path / name)])
    assert result.exit_code == 0, result.output
    assert ExportedModel(tmp_path / name).metadata["format"] == fmt


def test_large_weights_go_to_one_external_data_file(run_dirs, encoder, tmp_path, monkeypatch):
    """Past protobuf's 2 GB (a table of 10^7+ ids) the weights sit in `<file>.onnx.data`; shown here with the
    threshold lowered to 0 bytes: one data file, nothing else left beside it, the same scores."""
    import onnx

    from msrec.serve import export

    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 0)
    run_dir = run_dirs("star")
    out = tmp_path / "big" / "star.onnx"
    exported = ExportedModel(export_run(run_dir, "onnx", out))
    assert sorted(p.name for p in out.parent.iterdir()) == ["star.onnx", "star.onnx.data"]
    graph_only = onnx.load(str(out), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in graph_only.graph.initializer)
    onnx.checker.check_model(str(out))
    model = load_run(run_dir).model
    batch = parity_batches(encoder)["skewed"]
    with torch.no_grad():
        expected = model(batch)
    logits, _ = exported(*batch_inputs(batch))
    assert float((logits - expected).abs().max()) < 1e-5
