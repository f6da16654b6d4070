"""Bad input through the `msrec` command: one clear line naming file / column / row, a non-zero exit,
no traceback."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

import msrec
from msrec.api import score_table
from msrec.data.io import read_table, write_table


def check_error(result, *fragments: str) -> str:
    """The command failed with exactly one line on stderr, naming every fragment."""
    assert result.code not in (0, None), f"expected a failure, got exit {result.code}: {result.stdout}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{result.stderr}"
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def edit_csv(src: Path, dst: Path, row: int | None = None, column: str | None = None, value: str = "",
             drop: str | None = None) -> Path:
    """Copy a CSV, setting data row `row` (1-based, header excluded) of `column` to `value`, or dropping a column."""
    with open(src, newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    if row is not None:
        rows[row][header.index(column)] = value
    if drop is not None:
        j = header.index(drop)
        rows = [r[:j] + r[j + 1:] for r in rows]
    with open(dst, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return dst


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def run_dir(synthetic_config, tmp_path_factory) -> Path:
    """A small trained run to predict with and to corrupt."""
    out = tmp_path_factory.mktemp("bad-input") / "run"
    msrec.train(synthetic_config(model={"hidden": [8]}, train={"batch_size": 1024}), out=out)
    return out


# ------------------------------------------------------------------ training data


@pytest.mark.parametrize("row, column, value, expected", [
    (500, "item_price", "abc", "column `item_price` row 500: 'abc' is not a number"),
    (502, "item_price", "inf", "column `item_price` row 502: inf is not a finite number"),
    (503, "user_activity", "-inf", "column `user_activity` row 503: -inf is not a finite number"),
    (700, "click", "2", "column `click` row 700: label 2 is not 0 or 1"),
    (11, "click", "-1", "column `click` row 11: label -1 is not 0 or 1"),
    (300, "click", "", "column `click` row 300: missing label"),
    (301, "click", "NaN", "column `click` row 301: missing label"),
    (900, "user_id", "", "column `user_id` row 900: missing id"),  # data.missing_ids: error
    (901, "item_id", "NaN", "column `item_id` row 901: missing id"),
    (2999, "scenario", "", "column `scenario` row 2999: missing scenario"),
])
def test_bad_values_in_the_training_file_name_the_file_row(cli, tmp_path, synthetic_csv, synthetic_config,
                                                          row, column, value, expected):
    """Rows are those of the user's file (counted from 1, the header excluded), although training reads a
    seeded split of it."""
    data = edit_csv(synthetic_csv, tmp_path / "train.csv", row, column, value)
    cfg = write_config(tmp_path / "c.yaml", synthetic_config(data={"train": str(data), "missing_ids": "error"}))
    check_error(cli("train", cfg, "--out", tmp_path / "run"), f"{data}", expected)
    assert not (tmp_path / "run").exists()


def test_blank_ids_are_a_category_by_default_and_the_same_when_scoring(cli, tmp_path, synthetic_csv,
                                                                       synthetic_config):
    """A blank in a categorical column trains (its own id value); predict and the serving path score it
    alike; a blank scenario stays an error whatever data.missing_ids says."""
    data = shutil.copy(synthetic_csv, tmp_path / "train.csv")
    for row in range(100, 3000, 150):  # 20 blanks, spelt two ways: some fall in the training split
        edit_csv(data, data, row, "user_group", "" if row % 300 else "NaN")
    msrec.train(synthetic_config(data={"train": str(data)}), out=tmp_path / "run")
    run = msrec.load_run(tmp_path / "run")
    assert run.encoder.missing_ids == "category" and run.encoder.sparse["user_group"].vocab[-1] is None
    rows = edit_csv(synthetic_csv, tmp_path / "in.csv", 1, "user_group", "")
    assert cli("predict", tmp_path / "run", rows, tmp_path / "out.csv").code == 0
    predicted = msrec.predict(tmp_path / "run", rows, keep_columns=False)["score_click"][0].as_py()
    record = read_table(rows, string_columns=run.encoder.schema.text_columns()).slice(0, 1)
    record = record.set_column(record.column_names.index("user_group"), "user_group", pa.array([None], pa.string()))
    assert score_table(run, record)[0, 0].item() == pytest.approx(predicted)
    unknown = msrec.train(synthetic_config(data={"train": str(data), "missing_ids": "unknown"}), save=False)
    assert None not in unknown.encoder.sparse["user_group"].vocab
    blank_scenario = edit_csv(data, tmp_path / "s.csv", 17, "scenario", "")
    cfg = write_config(tmp_path / "s.yaml", synthetic_config(data={"train": str(blank_scenario)}))
    check_error(cli("train", cfg, "--out", tmp_path / "run-s"), "column `scenario` row 17: missing scenario")


def test_a_date_declared_as_a_label_is_named_as_written(cli, tmp_path, synthetic_csv, synthetic_config):
    table = read_table(synthetic_csv)
    table = table.append_column("day", pa.array(["2010-10-06"] * table.num_rows))
    write_table(table, tmp_path / "dated.csv")
    cfg = write_config(tmp_path / "c.yaml", synthetic_config(data={"train": str(tmp_path / "dated.csv"),
                                                                  "labels": ["day"]}))
    check_error(cli("train", cfg, "--out", tmp_path / "run"), "column `day` row 1: '2010-10-06' is not a 0/1 label")


def test_missing_column(cli, tmp_path, synthetic_csv, synthetic_config):
    data = edit_csv(synthetic_csv, tmp_path / "train.csv", drop="item_id")
    cfg = write_config(tmp_path / "c.yaml", synthetic_config(data={"train": str(data)}))
    check_error(cli("train", cfg, "--out", tmp_path / "run"), str(data), "missing column `item_id`")


def test_missing_column_in_a_separate_validation_file(cli, tmp_path, synthetic_csv, synthetic_config):
    val = edit_csv(synthetic_csv, tmp_path / "val.csv", drop="user_activity")
    cfg = write_config(tmp_path / "c.yaml", synthetic_config(data={"val": str(val)}))
    check_error(cli("train", cfg, "--out", tmp_path / "run"), str(val), "missing column `user_activity`")


@pytest.mark.parametrize("content, expected", [("", "the file is empty"), (None, "the file has no data rows")])
def test_empty_file(cli, tmp_path, synthetic_csv, synthetic_config, content, expected):
    data = tmp_path / "train.csv"
    data.write_text(content if content is not None else synthetic_csv.read_text().splitlines()[0] + "\n")
    cfg = write_config(tmp_path / "c.yaml", synthetic_config(data={"train": str(data)}))
    check_error(cli("train", cfg, "--out", tmp_path / "run"), str(data), expected)


def test_data_file_not_found(cli, tmp_path, synthetic_config):
    cfg = write_config(tmp_path / "c.yaml", synthetic_config(data={"train": str(tmp_path / "nope.csv")}))
    check_error(cli("train", cfg), "nope.csv", "file not found")


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("section, key", [("train", "batch_sise"), ("data", "sparce"), ("data", "labells")])
def test_unknown_or_misspelt_config_key(cli, tmp_path, synthetic_config, section, key):
    raw = synthetic_config()
    raw[section][key] = 1
    cfg = write_config(tmp_path / "c.yaml", raw)
    check_error(cli("train", cfg, "--out", tmp_path / "run"), str(cfg), f"unknown key `{section}.{key}`")


def test_misspelt_set_override(cli, tmp_path, synthetic_config):
    cfg = write_config(tmp_path / "c.yaml", synthetic_config())
    check_error(cli("train", cfg, "--set", "train.epoch=3"), str(cfg), "unknown key `train.epoch`")
    check_error(cli("train", cfg, "--set", "train.epochs=three"), "`train.epochs`", "integer")
    check_error(cli("train", cfg, "--set", "epochs"), "--set", "KEY=VALUE")


def test_unknown_model_or_model_option(cli, tmp_path, synthetic_config):
    cfg = write_config(tmp_path / "c.yaml", synthetic_config(model={"name": "dnnn"}))
    check_error(cli("train", cfg), "unknown model `dnnn`")
    cfg = write_config(tmp_path / "c.yaml", synthetic_config(model={"hiden": [8]}))
    check_error(cli("train", cfg), "unknown option `hiden`")
    cfg = write_config(tmp_path / "c.yaml", synthetic_config(model={"activation": "relux"}))
    check_error(cli("train", cfg), "model.activation:", "'relu'", "'gelu'")


def test_config_not_found_or_not_yaml(cli, tmp_path):
    check_error(cli("train", tmp_path / "missing.yaml"), "missing.yaml", "config file not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  train: [1\n")
    check_error(cli("train", bad), str(bad), "not valid YAML", "line")


# ------------------------------------------------------------------ prediction and evaluation input


def test_unknown_scenario_at_prediction_time(cli, tmp_path, run_dir, synthetic_csv):
    data = edit_csv(synthetic_csv, tmp_path / "in.csv", 10, "scenario", "s9")
    check_error(cli("predict", run_dir, data, tmp_path / "out.csv"), str(data),
                "column `scenario` row 10: unknown scenario 's9'")
    assert not (tmp_path / "out.csv").exists()


def test_prediction_input_errors(cli, tmp_path, run_dir, synthetic_csv):
    data = edit_csv(synthetic_csv, tmp_path / "in.csv", drop="item_category")
    check_error(cli("predict", run_dir, data, tmp_path / "out.csv"), str(data), "missing column `item_category`")
    data = edit_csv(synthetic_csv, tmp_path / "in2.csv", 42, "user_activity", "high")
    check_error(cli("predict", run_dir, data, tmp_path / "out.csv"), "column `user_activity` row 42")
    data = edit_csv(synthetic_csv, tmp_path / "in3.csv", 7, "user_id", "u7")  # integer ids in training (CSV text)
    check_error(cli("predict", run_dir, data, tmp_path / "out.csv"), "column `user_id` row 7: 'u7' is not an integer id")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    check_error(cli("predict", run_dir, empty, tmp_path / "out.csv"), str(empty), "empty")


def test_evaluation_file_with_a_bad_label(cli, tmp_path, run_dir, synthetic_csv):
    data = edit_csv(synthetic_csv, tmp_path / "eval.csv", 123, "click", "yes")
    check_error(cli("evaluate", run_dir, "--data", data), str(data), "column `click` row 123")


# ------------------------------------------------------------------ corrupt run directories


def corrupt_copy(run_dir: Path, tmp_path: Path, name: str, content: bytes | None) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    if content is None:
        (copy / name).unlink()
    else:
        (copy / name).write_bytes(content)
    return copy


@pytest.mark.parametrize("name, content, expected", [
    ("model.safetensors", None, "not a complete run directory (missing model.safetensors)"),
    ("encoder.json", None, "not a complete run directory (missing encoder.json)"),
    ("model.safetensors", b"garbage" * 10, "model.safetensors: cannot be loaded"),
    ("encoder.json", b"{not json", "encoder.json: not valid JSON"),
    ("encoder.json", b"[1, 2]", "encoder.json: not a valid encoder file"),
    ("encoder.json", b'{"version": 1}', "encoder.json: not a valid encoder file"),
    ("encoder.json", bytes(range(256)), "encoder.json: not valid JSON"),
    ("config.yaml", b"data: [1\n", "config.yaml: not valid YAML"),
    ("config.yaml", b"data: {train: x.csv}\nmodel: {name: nosuchmodel}\n", "unknown model `nosuchmodel`"),
    ("metrics.json", b"{", "metrics.json: not valid JSON"),
])
def test_corrupt_run_directory(cli, tmp_path, run_dir, synthetic_csv, name, content, expected):
    bad = corrupt_copy(run_dir, tmp_path, name, content)
    check_error(cli("predict", bad, synthetic_csv, tmp_path / "out.csv"), expected)
    check_error(cli("evaluate", bad, "--data", synthetic_csv), expected)


def test_truncated_weights_and_weights_of_another_shape(cli, tmp_path, run_dir, synthetic_csv):
    blob = (run_dir / "model.safetensors").read_bytes()
    bad = corrupt_copy(run_dir, tmp_path, "model.safetensors", blob[: len(blob) // 2])
    check_error(cli("predict", bad, synthetic_csv, tmp_path / "out.csv"), "model.safetensors: cannot be loaded")
    encoder = json.loads((run_dir / "encoder.json").read_text())
    encoder["sparse"]["user_id"]["vocab"] = encoder["sparse"]["user_id"]["vocab"][:5]
    shutil.rmtree(bad)
    bad = corrupt_copy(run_dir, tmp_path, "encoder.json", json.dumps(encoder).encode())
    check_error(cli("predict", bad, synthetic_csv, tmp_path / "out.csv"), "model.safetensors: does not match",
                "size mismatch")


def test_run_directory_not_found(cli, tmp_path, synthetic_csv):
    check_error(cli("evaluate", tmp_path / "nowhere"), "nowhere: run directory not found")
    check_error(cli("predict", tmp_path / "nowhere", synthetic_csv, tmp_path / "o.csv"), "run directory not found")


# ------------------------------------------------------------------ the real console script


def test_console_script_exits_non_zero_with_one_line(tmp_path, run_dir, synthetic_csv):
    """The same through a separate process, as a user runs it."""
    data = edit_csv(synthetic_csv, tmp_path / "in.csv", 10, "scenario", "s9")
    args = ["predict", str(run_dir), str(data), str(tmp_path / "o.csv")]
    proc = subprocess.run([sys.executable, "-m", "msrec", *args], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert f"{data}: column `scenario` row 10: unknown scenario 's9'" in lines[0]
