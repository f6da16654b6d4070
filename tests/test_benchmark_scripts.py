"""The speed scripts of benchmarks/ still run (tiny sizes; their figures are not checked here, only that
every model row and every format row is printed with numbers)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_throughput_prints_a_row_of_ratios_per_model():
    models = ["dnn", "star", "split_merge"]  # (the whole zoo: minutes; the script runs every model by default)
    out = _run("throughput.py", "--rows", "3000", "--batch-size", "512", "--repeats", "2", "--models", *models)
    for name in models:
        row = rf"^{name}\s+[\d,]+\s+[\d,]+\s+\d+\.\d\d\s+[\d,]+\s+[\d,]+\s+\d+\.\d\d$"
        assert re.search(row, out, re.MULTILINE), f"{name} missing:\n{out}"


def test_ingest_prints_rows_per_second_for_both_formats():
    out = _run("ingest.py", "--rows", "20000", "--repeats", "1")
    for fmt in ("parquet", "csv"):
        assert re.search(rf"^{fmt}\s+\d+\.\d\d\s+\d+\.\d\d\s+[\d,]+$", out, re.MULTILINE), out


def test_large_model_scores_agree_on_every_path(tmp_path):
    """The 10^7-id walk-through at a tiny size: predict, onnxruntime and the service give the same scores."""
    out = _run("large_model.py", "--ids", "2000", "--rows", "3000", "--embed-dim", "4", "--serve-rows", "50",
               "--out", str(tmp_path))
    for step in ("train", "predict", "export onnx", "export pt", "onnxruntime"):
        assert re.search(rf"^\| {step} \| [\d.]+ \| [\d,]+ \|$", out, re.MULTILINE), out
    diffs = re.search(r"onnxruntime (\S+), serve /predict (\S+)$", out, re.MULTILINE)
    assert diffs and max(float(diffs[1]), float(diffs[2])) < 1e-5, out


def test_scenarios_prints_a_row_per_model_with_a_speed_per_scenario_count():
    out = _run("scenarios.py", "--rows", "2000", "--batch-size", "512", "--repeats", "1", "--scenarios", "3", "100",
               "--models", "dnn", "split_merge", "hmoe")
    for label in ("dnn", "split_merge", "hmoe", r"hmoe\[top_k=4\]"):
        assert re.search(rf"^{label}\s+[\d,]+\s+[\d,]+\s+\d+\.\d\d\s+[\d.]+M / [\d.]+M$", out, re.MULTILINE), out


def test_floors_print_a_bound_per_scenario_count():
    for flag in ("--star-floor", "--separate-floor"):
        out = _run("scenarios.py", "--rows", "3000", "--batch-size", "512", "--repeats", "1", "--scenarios", "3", "20",
                   flag)
        for S in (3, 20):
            # (a difference of two timings: negative when the machine is noisy)
            assert re.search(rf"^\s+{S}(\s+-?\d+\.\d){{3,4}}(\s+\d+\.\d\d){{2,3}}$", out, re.MULTILINE), out


def test_dropout_prints_each_mask_against_f_dropout():
    out = _run("dropout.py", "--rows", "256", "--width", "64", "--repeats", "3")
    for name in ("F.dropout", "torch.rand mask", "msrec.nn.mlp.dropout"):
        assert re.search(rf"^{re.escape(name)}.*\s+\d+\.\d\d\s+\d+\.\d\d$", out, re.MULTILINE), out


def test_grouped_gemm_prints_every_method_per_scenario_count():
    out = _run("grouped_gemm.py", "--rows", "3000", "--batch-size", "512", "--scenarios", "3", "20", "--batches", "2",
               "--fbgemm")
    for S in (3, 20):
        assert re.search(rf"^\s+{S}\s+\d+\s+\d+(\s+\d+\.\d\d){{7}}$", out, re.MULTILINE), out
    assert len(re.findall(r"fbgemm jagged_dense_bmm forward [\d.]+ ms, grouped forward [\d.]+ ms", out)) == 2, out


def test_predict_memory_prints_both_modes(tmp_path):
    out = _run("predict_memory.py", "--rows", "20000", "--file-rows", "10000", "--chunk-rows", "3000", "--repeats", "1",
               "--out", str(tmp_path))
    assert "scores identical" in out, out
    out = _run("predict_memory.py", "--rows", "20000", "--file-rows", "10000", "--chunk-rows", "3000", "--repeats", "1",
               "--out", str(tmp_path), "--evaluate")
    assert "the same report" in out, out
    for mode in ("whole", "chunked"):
        assert re.search(rf"^{mode}\s+\d+\.\d\s+[\d,]+\s+[\d,]+\s+\d+\.\d\d$", out, re.MULTILINE), out
