"""Export a trained run to TorchScript or ONNX: one graph for every scenario, any batch size.

Models take a `Batch`; a serving runtime has plain tensors. `ExportModule` wraps a model so that its
inputs are `sparse [B, F] int64`, `dense [B, Dd] float32`, `scenario [B] int64` and one `[B, L] int64`
tensor per multi-hot list, and its outputs are `logits [B, T]` and `scores [B, T]` (the probabilities).

Both formats trace the model. Tracing records what ran on the example batch, so the example holds every
scenario (each scenario's branch gets recorded), and the shared parts that would otherwise bake
data-dependent values into the graph (`ScenarioRouting`'s row counts, `ConditionGroups`' number of
groups) switch to dynamic ops while tracing (see `msrec.nn.routing.exporting`). The parity tests in
`tests/serve` check every registered model against its eager outputs on batches of another size and
scenario mix than the example, one of them missing a scenario.

ONNX goes through PyTorch's TorchScript-based exporter (`dynamo=False`): the torch.export-based one
refuses Python branches on data-dependent sizes, which per-scenario routing needs. A protobuf file holds at
most 2 GB, so a model whose weights pass `EXTERNAL_DATA_BYTES` (a table of 10^7+ ids) keeps them in one
`<file>.onnx.data` beside the graph (ONNX's external data; onnxruntime reads it from the same folder).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.errors import MsrecError
from msrec.schema import FeatureSpec

FORMATS = ("torchscript", "onnx")
SUFFIXES = {"torchscript": (".pt", ".pth"), "onnx": (".onnx",)}  # what loaders (ExportedModel too) go by
ONNX_OPSET = 17
METADATA_KEY = "msrec"  # TorchScript extra file `msrec.json` / ONNX metadata_props key
OUTPUTS = ["logits", "scores"]
EXTERNAL_DATA_BYTES = 1 << 30  # weights past this go to `<file>.data` (protobuf's limit is 2 GB, graph included)


class ExportModule(nn.Module):
    """A model behind plain tensor inputs: `(sparse, dense, scenario, *lists) -> (logits, scores)`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, sparse: Tensor, dense: Tensor, scenario: Tensor, *lists: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(Batch(sparse=sparse, dense=dense, scenario=scenario, lists=list(lists)))
        return logits, torch.sigmoid(logits)


def input_names(spec: FeatureSpec) -> list[str]:
    return ["sparse", "dense", "scenario", *(f"list_{i}" for i in range(len(spec.list_fields)))]


def batch_inputs(batch: Batch) -> tuple[Tensor, ...]:
    """The exported graph's inputs for a batch (ids as int64, dense as float32)."""
    return (batch.sparse.long(), batch.dense.float(), batch.scenario.long(), *(t.long() for t in batch.lists))


def example_batch(spec: FeatureSpec, rows_per_scenario: int = 2, list_len: int = 4, seed: int = 0) -> Batch:
    """A random batch holding every scenario, so that tracing runs (and records) every scenario's branch."""
    g = torch.Generator().manual_seed(seed)
    n = rows_per_scenario * spec.num_scenarios
    sparse = torch.stack([torch.randint(0, v, (n,), generator=g) for v in spec.sparse_vocab], 1) \
        if spec.sparse_vocab else torch.zeros(n, 0, dtype=torch.long)
    lists = [torch.randint(0, v, (n, list_len), generator=g) for v in spec.list_vocab]
    scenario = torch.arange(spec.num_scenarios).repeat(rows_per_scenario)
    return Batch(sparse=sparse, dense=torch.randn(n, spec.dense_dim, generator=g), scenario=scenario, lists=lists)


def metadata(spec: FeatureSpec, model_name: str, fmt: str) -> dict[str, Any]:
    from msrec import __version__

    return {"msrec_version": __version__, "model": model_name, "format": fmt, "inputs": input_names(spec),
            "outputs": OUTPUTS, "sparse_fields": spec.sparse_fields, "list_fields": spec.list_fields,
            "dense_dim": spec.dense_dim, "scenarios": spec.scenarios, "tasks": spec.tasks}


def resolve_format(fmt: str | None, out: str | Path) -> str:
    """The format to write: `fmt`, or without one the extension of `out`. An extension naming another format
    (ONNX in `x.pt`) is refused: whatever loads the file later picks its loader by the extension."""
    if fmt is not None and fmt not in FORMATS:
        raise MsrecError(f"--format: unknown format `{fmt}` (formats: {', '.join(FORMATS)})")
    suffix = Path(out).suffix.lower()
    named = next((f for f, suffixes in SUFFIXES.items() if suffix in suffixes), None)
    expected = " or ".join(f"{', '.join(s)} for {f}" for f, s in SUFFIXES.items())
    if fmt is None and named is None:
        raise MsrecError(f"--out {out}: cannot tell the format from the extension `{suffix}` ({expected}); "
                         "name the file so or pass --format")
    if fmt is not None and named != fmt:
        raise MsrecError(f"--out {out}: --format {fmt} writes a {' / '.join(SUFFIXES[fmt])} file, not "
                         f"`{suffix or 'no extension'}` (loaders go by the extension)")
    return named


def export_model(model: nn.Module, spec: FeatureSpec, fmt: str | None, out: str | Path,
                 model_name: str = "") -> Path:
    """Write `model` (in eval mode) as TorchScript (`.pt`) or ONNX (`.onnx`) to `out`; `fmt` None: by extension."""
    fmt = resolve_format(fmt, out)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    wrapper = ExportModule(model).eval()
    inputs = batch_inputs(example_batch(spec))
    info = json.dumps(metadata(spec, model_name or getattr(model, "registry_name", type(model).__name__), fmt))
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about every Python value it records; the dynamic parts are handled (see above).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        if fmt == "torchscript":
            traced = torch.jit.trace(wrapper, inputs, check_trace=False)
            torch.jit.save(traced, str(out), _extra_files={f"{METADATA_KEY}.json": info})
        else:
            _export_onnx(wrapper, inputs, spec, out, info)
    return out


def _export_onnx(wrapper: nn.Module, inputs: tuple[Tensor, ...], spec: FeatureSpec, out: Path, info: str) -> None:
    import onnx

    names = input_names(spec)
    dynamic = {name: {0: "batch"} for name in [*names, *OUTPUTS]}
    for name in names[3:]:  # list inputs: any padded length too
        dynamic[name] = {0: "batch", 1: f"{name}_length"}
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as scratch:
        # Past 2 GB the exporter writes every weight to a file of its own beside the graph: in a scratch folder,
        # then gathered into one `.data` file below.
        raw = Path(scratch) / "model.onnx"
        torch.onnx.export(wrapper, inputs, str(raw), dynamo=False, input_names=names, output_names=OUTPUTS,
                          dynamic_axes=dynamic, opset_version=ONNX_OPSET)
        proto = onnx.load(str(raw))
    # The exporter drops inputs a model never reads (`scenario` where only the scenario-indicator ids route,
    # `dense` without dense features); put them back, unused, so that every file takes the same documented
    # inputs and a deployer can feed what `InputEncoder.encode` gives.
    declared = {i.name: i for i in proto.graph.input}
    for name, tensor in zip(names, inputs, strict=True):
        if name not in declared:
            dims = [dynamic[name].get(axis, size) for axis, size in enumerate(tensor.shape)]
            elem = onnx.TensorProto.FLOAT if tensor.dtype == torch.float32 else onnx.TensorProto.INT64
            declared[name] = onnx.helper.make_tensor_value_info(name, elem, dims)
    ordered = [declared[name] for name in names] + [i for n, i in declared.items() if n not in names]
    del proto.graph.input[:]
    proto.graph.input.extend(ordered)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info
    data = out.with_name(out.name + ".data")
    data.unlink(missing_ok=True)  # a stale one from an earlier export of another model
    weights = sum(int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
                  for t in proto.graph.initializer)
    if weights > EXTERNAL_DATA_BYTES:
        onnx.save(proto, str(out), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
                  size_threshold=0)
    else:
        onnx.save(proto, str(out))


def export_run(run_dir: str | Path, fmt: str | None, out: str | Path) -> Path:
    """`msrec export`: the run's model, exported with its feature layout, scenarios and tasks as metadata."""
    from msrec.runs import load_run

    resolve_format(fmt, out)  # before loading the run
    run = load_run(run_dir)
    return export_model(run.model, run.encoder.spec(), fmt, out, run.config.model.name)


class ExportedModel:
    """An exported file loaded back (TorchScript with torch, ONNX with onnxruntime), called the same way."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise MsrecError(f"{self.path}: exported model not found")
        if self.path.suffix == ".onnx":
            import onnxruntime as ort

            self.format = "onnx"
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
            meta = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY, "{}")
        else:
            self.format = "torchscript"
            files = {f"{METADATA_KEY}.json": ""}
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                self.module = torch.jit.load(str(self.path), _extra_files=files)
            meta = files[f"{METADATA_KEY}.json"] or "{}"
        self.metadata: dict[str, Any] = json.loads(meta)

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        """`(sparse, dense, scenario, *lists) -> (logits, scores)`, as `batch_inputs` gives them."""
        if self.format == "onnx":
            feeds = {name: np.ascontiguousarray(t.numpy())
                     for name, t in zip(self.metadata["inputs"], inputs, strict=True)}
            logits, scores = self.session.run(OUTPUTS, feeds)
            return torch.from_numpy(logits), torch.from_numpy(scores)
        with torch.no_grad():
            logits, scores = self.module(*inputs)
        return logits, scores

    def predict(self, batch: Batch) -> Tensor:
        return self(*batch_inputs(batch))[1]
